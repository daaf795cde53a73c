"""Plan -> which source tensors go where, and the config of the output model.

Decoder-block tensors are `<layers_prefix><i>.<child>.<...>`: a tensor is dropped when its block is dropped
or when <child> belongs to a removed sublayer (family table), and otherwise renumbered to the output index.
Everything outside the blocks (embeddings, final norm, lm_head) is kept as it is.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..prune.families import Family
from ..prune.plan import PrunePlan
from . import nas
from .remote import AUTO_MAP, REMOTE_DIR, REMOTE_FILES
from .source import Source
from .writer import OutTensor, output_dtype

# Config lists that are not per layer even when their length happens to equal num_hidden_layers.
_NOT_PER_LAYER = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id", "suppress_tokens"}


def map_tensors(
    source: Source,
    plan: PrunePlan,
    family: Family,
    dtype: str = "auto",
    ignored: frozenset[str] = frozenset(),
    keep_mlp_norm: frozenset[int] = frozenset(),
) -> list[OutTensor]:
    """Output tensors in source storage order (sequential reads), renamed to output numbering; `ignored` source
    tensors (which the model never reads) are left out. `keep_mlp_norm`: source layers whose removed MLP
    keeps its input norm (the serving format puts an all-zero FFN there)."""
    pattern = re.compile(re.escape(family.layers_prefix) + r"(\d+)\.([^.]+)(\..*)?$")
    new_index = {layer.source: layer.output for layer in plan.layers}
    out = []
    for info in sorted(source.tensors.values(), key=lambda t: (t.file, t.start)):
        name = info.name
        if name in ignored:
            continue
        if m := pattern.match(name):
            i, child, rest = int(m.group(1)), m.group(2), m.group(3) or ""
            if i not in new_index:
                continue
            if i in plan.drop_attention and child in family.attention:
                continue
            if i in plan.drop_mlp and child in family.mlp and not (i in keep_mlp_norm and child == family.mlp_in):
                continue
            name = f"{family.layers_prefix}{new_index[i]}.{child}{rest}"
        out.append(OutTensor(name, info, output_dtype(info.dtype, dtype)))
    return out


def stock_config(source_config: dict, plan: PrunePlan) -> dict:
    """The source config with only the kept blocks: num_hidden_layers and every per-layer list sliced."""
    kept = [layer.source for layer in plan.layers]
    config = dict(source_config)
    for key, value in source_config.items():
        if isinstance(value, list) and len(value) == plan.num_layers and key not in _NOT_PER_LAYER:
            config[key] = [value[i] for i in kept]
    config["num_hidden_layers"] = len(kept)
    return config


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
        "attention_modules": list(family.attention),
        "mlp_modules": list(family.mlp),
        "mlp_input_module": family.mlp_in,
        "mlp_output_module": family.mlp_out,
        "adaptive_ffn_skip": adaptive,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "dtype": text.get("dtype") or text.get("torch_dtype"),
        "text_config": {
            k: v for k, v in text.items() if k not in ("architectures", "auto_map", "transformers_version")
        },
    }


def with_layer_types(config: dict) -> dict:
    """Spell out `layer_types` when the family derives it from other fields, so slicing keeps each kept
    layer's attention type (sliding or full) instead of re-deriving it for the new numbering."""
    if "layer_types" in config:
        return config
    from transformers import AutoConfig

    try:
        derived = getattr(AutoConfig.for_model(**config), "layer_types", None)
    except Exception:  # the source check reports a broken config with a clearer message
        return config
    return {**config, "layer_types": list(derived)} if derived else config


def copy_remote_code(folder: Path, files: tuple[str, ...] = REMOTE_FILES) -> None:
    for name in files:
        shutil.copyfile(REMOTE_DIR / name, folder / name)
