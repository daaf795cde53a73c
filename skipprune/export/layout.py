"""Plan -> which source tensors go where, and the config of the output model.

Decoder-block tensors are `<layers_prefix><i>.<child>.<...>`: a tensor is dropped when its block is dropped
or when <child> belongs to a removed sublayer (family table), and otherwise renumbered to the output index.
Everything outside the blocks (embeddings, final norm, lm_head) is kept as it is.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..errors import PlanError, describe
from ..families.config import NOT_PER_LAYER, keep_layers, layer_count
from ..families.discover import blocks_fixed, renumbering_breaks
from ..prune.family import Family
from ..prune.plan import PrunePlan, layers_phrase
from ..remote import AUTO_MAP, REMOTE_DIR, REMOTE_FILES
from . import nas
from .source import Source
from .writer import OutTensor, output_dtype


def map_tensors(
    source: Source,
    plan: PrunePlan,
    family: Family,
    dtype: str = "auto",
    ignored: frozenset[str] = frozenset(),
    keep_mlp_norm: frozenset[int] = frozenset(),
    rename: dict[str, str] | None = None,
) -> list[OutTensor]:
    """Output tensors in source storage order (sequential reads), renamed to output numbering; `ignored` source
    tensors (which the model never reads) are left out. `keep_mlp_norm`: source layers whose removed MLP
    keeps its input norm (the serving format puts an all-zero FFN there). `rename`: checkpoint name -> the
    loaded model's name, for outputs written under the model's names."""
    prefix = family.layers_path + "." if rename else family.layers_prefix

    def owned(i: int, sublayer: str) -> tuple[str, ...]:
        split = family.at(i)
        return getattr(split, sublayer) if rename else split.weights_of(sublayer)

    pattern = re.compile(re.escape(prefix) + r"(\d+)\.([^.]+)(\..*)?$")
    new_index = {layer.source: layer.output for layer in plan.layers}
    out = []
    for info in sorted(source.tensors.values(), key=lambda t: (t.file, t.start)):
        name = info.name
        if name in ignored:
            continue
        name = rename.get(name, name) if rename else name
        if m := pattern.match(name):
            i, child, rest = int(m.group(1)), m.group(2), m.group(3) or ""
            if i not in new_index:
                continue
            if i in plan.drop_attention and child in owned(i, "attention"):
                continue
            if (
                i in plan.drop_mlp
                and child in owned(i, "mlp")
                and not (i in keep_mlp_norm and child == family.at(i).mlp_in)
            ):
                continue
            name = f"{prefix}{new_index[i]}.{child}{rest}"
        out.append(OutTensor(name, info, output_dtype(info.dtype, dtype)))
    return out


def stock_config(source_config: dict, plan: PrunePlan) -> dict:
    """The source config with only the kept blocks: the layer count and every per-layer list sliced, lists of
    layer indices renumbered, in the text config of a multimodal wrapper."""
    return keep_layers(source_config, [layer.source for layer in plan.layers], plan.num_layers)


def check_renumbering(source_config: dict, plan: PrunePlan, family: Family) -> None:
    """Refuse a plan whose kept weights the output's config would not build as they are (see
    families.discover.renumbering_breaks)."""
    if not plan.dropped_blocks:
        return
    kept = [layer.source for layer in plan.layers]
    gone = layers_phrase(plan.dropped_blocks).replace("layer", "block")
    try:
        broken, resized = renumbering_breaks(source_config, stock_config(source_config, plan), kept, family.alike)
    except Exception as e:  # the family's own config class refuses the kept layers
        raise PlanError(
            f"{family.model_type}: without {gone}, its config does not build ({describe(e)}); remove other blocks"
        ) from None
    if resized:
        raise PlanError(f"{family.model_type}: {blocks_fixed(resized)}")
    if broken:
        raise PlanError(
            f"{family.model_type}: without {gone}, its config would build source {layers_phrase(broken)} with other "
            "weights (the family derives what a block holds from its position); remove other blocks, or only "
            "sublayers (--drop-mixer, --drop-mlp) where the family has them"
        )


def output_config(
    source_config: dict,
    plan: PrunePlan,
    family: Family,
    dtype: str,
    adaptive: dict | None = None,
    serving: bool = False,
) -> dict:
    """config.json of the output: the serving format when asked, else the stock family when only whole blocks go
    (and no adaptive FFN skipping), else the skipprune wrapper."""
    text = stock_config(source_config, plan)
    if dtype != "auto":
        text["dtype"] = dtype
        text.pop("torch_dtype", None)
    if serving:
        return nas.output_config(text, plan)
    if plan.blocks_only and adaptive is None:
        return text
    layers = plan.layers
    return {
        "model_type": "skipprune",
        "architectures": ["SkipPruneForCausalLM"],
        "auto_map": dict(AUTO_MAP),
        "layer_has_attention": [layer.attention for layer in layers],
        "layer_has_mlp": [layer.mlp for layer in layers],
        "source_layer_index": [layer.source for layer in layers],
        "source_num_hidden_layers": plan.num_layers,
        **(_kind_fields(family, layers) or _split_fields(family)),
        **_mixer_field(family, layers),
        "decoder_layers": family.layers_path,
        "adaptive_ffn_skip": adaptive,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "dtype": text.get("dtype") or text.get("torch_dtype"),
        "text_config": {
            k: v for k, v in text.items() if k not in ("architectures", "auto_map", "transformers_version")
        },
    }


def _split_fields(split: Family) -> dict:
    return {
        "attention_modules": list(split.attention),
        "mlp_modules": list(split.mlp),
        "mlp_input_module": split.mlp_in,
        "mlp_output_module": split.mlp_out,
        "attention_returns": split.returns_of("attention"),
        "mlp_returns": split.returns_of("mlp"),
    }


def _mixer_field(family: Family, layers) -> dict:
    """The token mixer each output layer kept (null: removed), where it is not always attention."""
    if family.mixer_noun == "attention":
        return {}
    return {"layer_mixer": [family.at(layer.source).mixer if layer.attention else None for layer in layers]}


def _kind_fields(family: Family, layers) -> dict:
    """A hybrid's kinds of block and the kind of each output layer."""
    if not family.kinds:
        return {}
    used = sorted({family.layer_kind[layer.source] for layer in layers})
    return {
        "layer_kinds": [{"mixer": family.kinds[k].mixer, **_split_fields(family.kinds[k])} for k in used],
        "layer_kind": [used.index(family.layer_kind[layer.source]) for layer in layers],
    }


def with_layer_types(config: dict) -> dict:
    """Spell out every per-layer list the config class derives from other fields (e.g. `layer_types` from a
    sliding-window pattern), so slicing keeps each kept layer's own settings instead of re-deriving them for
    the new numbering."""
    from transformers import AutoConfig

    try:
        built = AutoConfig.for_model(**config)
    except Exception:  # the source check reports a broken config with a clearer message
        return config
    nested = isinstance(config.get("text_config"), dict)
    raw = config["text_config"] if nested else config
    derived = (built.get_text_config(decoder=True) if nested else built).to_dict()
    n = layer_count(raw)
    extra = {
        k: list(v)
        for k, v in derived.items()
        if k not in raw and isinstance(v, (list, tuple)) and n and len(v) == n and k not in NOT_PER_LAYER
    }
    if not extra:
        return config
    return {**config, "text_config": {**raw, **extra}} if nested else {**config, **extra}


def copy_remote_code(folder: Path, files: tuple[str, ...] = REMOTE_FILES) -> None:
    for name in files:
        shutil.copyfile(REMOTE_DIR / name, folder / name)
