"""Where a model's decoder blocks are, and the names its weights have in a checkpoint and once loaded."""

from __future__ import annotations

import functools

from .config import layer_count, text_config


class NoDecoderBlocks(Exception):
    """The model has no module list with one entry per layer."""


def decoder_layers(model, count: int) -> tuple[str, object]:
    """(path, module list) of the decoder blocks: the module list with `count` entries whose entries are
    blocks (modules with parameters), the outermost one when several qualify; failing that, one where some
    entries are (blocks emptied in place, as sweep does)."""
    import torch

    lists = [
        (name, module, [any(True for _ in block.parameters()) for block in module])
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    found = [(name, m) for name, m, weighted in lists if all(weighted)] or [
        (name, m) for name, m, weighted in lists if any(weighted)
    ]
    if not found:
        raise NoDecoderBlocks(f"no list of {count} decoder blocks")
    # a vision or audio encoder may have as many layers as the language model: never pick it
    text = [nm for nm in found if not any(w in nm[0] for w in ("vision", "visual", "audio", "image", "encoder"))]
    return min(text or found, key=lambda nm: nm[0].count("."))


def locate_blocks(model):
    """(path, module list) of a loaded (or meta) causal LM's decoder blocks: where a skipprune export's config
    says they are (a tampered export may hold a block without weights), else found as decoder_layers does."""
    path = getattr(model.config, "decoder_layers", None)
    if isinstance(path, str):
        return path, model.get_submodule(path)
    return decoder_layers(model, model.config.get_text_config().num_hidden_layers)


def checkpoint_names(model, state: dict) -> dict:
    """`state` (model names) under the names a checkpoint of it holds: transformers renames and fuses some
    weights on load (MoE experts, old multimodal prefixes) and reverts that when it saves."""
    try:
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(model, state)
    except Exception:  # nothing to revert, or an older transformers: the names are the model's
        return state


@functools.lru_cache(maxsize=8)
def _model_names(config_json: str) -> dict[str, str]:
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads(config_json)))
    names = {}
    for name, tensor in model.state_dict().items():
        stored = list(checkpoint_names(model, {name: tensor}))
        if len(stored) == 1:
            names[stored[0]] = name
    return names


def model_names(config: dict) -> dict[str, str]:
    """checkpoint name -> name in the loaded model, for every weight that transformers only renames on load
    (a multimodal wrapper's `language_model.model.*` -> `model.language_model.*`, ...)."""
    import json

    return _model_names(json.dumps(config, sort_keys=True))


def renumbering_breaks(config: dict, kept_config: dict, kept: list[int], alike: bool = False):
    """What the output's config (`kept_config`, the source's with only the `kept` layers) would build with other
    weights than the source holds: (kept source layers, weights outside the blocks). A family that derives what a
    block holds from its position (Jamba's attention in every 8th layer from the 4th, Zamba2's adapter per
    hybrid layer) cannot always renumber its blocks; weights sized by the layer count (Gemma 3n's per-layer
    embeddings) do not follow a cut. `alike`: the source's blocks are all built alike, so only the second can
    happen. Raises ValueError (the family's own) when `kept_config` does not build at all."""
    import json

    before, around = _built(json.dumps(config, sort_keys=True))
    after, kept_around = _built(json.dumps(kept_config, sort_keys=True))
    resized = sorted(n for n, shape in around.items() if kept_around.get(n, shape) != shape)
    broken = [] if alike else [i for j, i in enumerate(kept) if before[i] != after[j]]
    return broken, resized


@functools.lru_cache(maxsize=8)
def _built(config_json: str) -> tuple[list[str], dict]:
    """Per decoder block, its weights' names and shapes; the shapes of the weights outside the blocks."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(config_json)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    path, blocks = decoder_layers(model, layer_count(text_config(config)))
    outside = {n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith(path + ".")}
    return [json.dumps(sorted((n, list(p.shape)) for n, p in b.named_parameters())) for b in blocks], outside


def blocks_fixed(resized: list[str]) -> str:
    """Why whole blocks cannot go, given the weights outside them that are sized by the layer count."""
    verb = "is" if len(resized) == 1 else "are"
    return (
        f"{', '.join(resized[:2])} outside the decoder blocks {verb} sized by the number of layers (per-layer "
        "inputs), which skipprune does not cut, so whole blocks cannot be removed"
    )
