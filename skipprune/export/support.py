"""The table `skipprune families` prints: what can be removed from a model type with the installed transformers."""

from __future__ import annotations

from ..families import check_config, family_of
from ..families.config import keep_layers
from ..families.discover import blocks_fixed, renumbering_breaks
from ..families.toy import TOY_LAYERS, shrink


def support(model_type: str) -> dict[str, str]:
    """What skipprune can remove from `model_type` with the installed transformers, studied on a tiny instance of
    the family's default config: 'yes' or the reason, per capability (blocks, attention, mlp, serving), and
    `mixers`, the kinds of token mixer its blocks have where they split ('attention', 'linear attention', ...)."""
    from transformers import AutoConfig

    from ..errors import SkippruneError
    from ..formats.nemotron_nas import NAS_FAMILIES

    try:
        check_config({"model_type": model_type})
        config = shrink(AutoConfig.for_model(model_type).to_dict())
        config["model_type"] = model_type
        family = family_of(config)
    except SkippruneError as e:
        return {**dict.fromkeys(("blocks", "attention", "mlp", "serving"), str(e)), "mixers": ""}
    except Exception as e:  # the family's own code refuses even its default config at toy size
        why = f"a tiny {model_type} could not be built ({type(e).__name__})"
        return {**dict.fromkeys(("blocks", "attention", "mlp", "serving"), why), "mixers": ""}
    sub = family.no_sublayers
    kept = [i for i in range(TOY_LAYERS) if i != 1]
    try:
        _, resized = renumbering_breaks(config, keep_layers(config, kept, TOY_LAYERS), kept)
        blocks = blocks_fixed(resized) if resized else "yes"
    except Exception as e:  # the family's config class refuses a toy without block 1
        blocks = f"its config does not build without a block ({type(e).__name__})"
    mixers = [k.mixer for k in family.kinds or (family,)]
    return {
        "blocks": blocks,
        "attention": sub or family.no_attention or "yes",
        "mlp": sub or "yes",
        "serving": "yes"
        if model_type in NAS_FAMILIES
        else f"--format nemotron-nas takes {' and '.join(NAS_FAMILIES)} sources",
        # the kinds of token mixer --drop-mixer removes (--drop-attn: attention only)
        "mixers": "" if sub else ", ".join(dict.fromkeys(mixers)),
    }
