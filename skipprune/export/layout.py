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
from ..remote import REMOTE_DIR, REMOTE_FILES
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


def output_config(source_config: dict, plan: PrunePlan, family: Family, dtype: str, fmt, adaptive=None) -> dict:
    """config.json of the output in the format `fmt` (skipprune.formats), from the stock config of the kept
    blocks, converted to `dtype`."""
    text = stock_config(source_config, plan)
    if dtype != "auto":
        text["dtype"] = dtype
        text.pop("torch_dtype", None)
    return fmt.config(text, plan, family, adaptive)


def stand_in_tensors(src: Source, plan: PrunePlan, family: Family, dtype: str, fmt) -> list[OutTensor]:
    """The all-zero FFNs the format `fmt` puts where a layer keeps its attention but lost its MLP."""
    layers = fmt.stand_ins(plan)
    if not layers:
        return []
    hidden = int(src.config["hidden_size"])
    like = next(t for name, t in src.tensors.items() if name.endswith(".mlp.down_proj.weight"))
    out_dtype = output_dtype(like.dtype, dtype)
    width = fmt.stand_in_width
    shapes = {"gate_proj": (width, hidden), "up_proj": (width, hidden), "down_proj": (hidden, width)}
    return [
        OutTensor(f"{family.layers_prefix}{i}.mlp.{proj}.weight", None, out_dtype, shape)
        for i in layers
        for proj, shape in shapes.items()
    ]


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
