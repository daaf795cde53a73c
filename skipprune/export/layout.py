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
from .anatomy import NOT_PER_LAYER, keep_layers
from .remote import AUTO_MAP, REMOTE_DIR, REMOTE_FILES
from .source import Source, layer_count
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
    attention = family.attention if rename else family.weights_of("attention")
    mlp = family.mlp if rename else family.weights_of("mlp")
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
            if i in plan.drop_attention and child in attention:
                continue
            if i in plan.drop_mlp and child in mlp and not (i in keep_mlp_norm and child == family.mlp_in):
                continue
            name = f"{prefix}{new_index[i]}.{child}{rest}"
        out.append(OutTensor(name, info, output_dtype(info.dtype, dtype)))
    return out


def stock_config(source_config: dict, plan: PrunePlan) -> dict:
    """The source config with only the kept blocks: the layer count and every per-layer list sliced, lists of
    layer indices renumbered, in the text config of a multimodal wrapper."""
    kept = [layer.source for layer in plan.layers]
    if isinstance(source_config.get("text_config"), dict):
        return {**source_config, "text_config": keep_layers(source_config["text_config"], kept, plan.num_layers)}
    return keep_layers(source_config, kept, plan.num_layers)


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
        "decoder_layers": family.layers_path,
        "attention_returns": family.attention_returns,
        "mlp_returns": family.mlp_returns,
        "adaptive_ffn_skip": adaptive,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "dtype": text.get("dtype") or text.get("torch_dtype"),
        "text_config": {
            k: v for k, v in text.items() if k not in ("architectures", "auto_map", "transformers_version")
        },
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
