"""Reading and cutting a model's config.json as a dict: where the layer count is, the language model's part of a
multimodal wrapper, and the config with only some layers (every per-layer list sliced, layer numbers renumbered)."""

from __future__ import annotations

# Config keys that count decoder layers (gpt2 says n_layer), in the language model's config of a wrapper.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def text_config(config: dict) -> dict:
    """The language model's config: `text_config` of a multimodal wrapper, else the config itself."""
    return config["text_config"] if isinstance(config.get("text_config"), dict) else config


# Per-layer patterns that are the layer count where no key counts them (Nemotron-H: one entry per block).
PATTERN_KEYS = ("layers_block_type",)


def layer_count(config: dict) -> int | None:
    text = text_config(config)
    count = next((text[k] for k in LAYER_KEYS if type(text.get(k)) is int), None)
    if count is None and not any(k in text for k in LAYER_KEYS):
        count = next((len(text[k]) for k in PATTERN_KEYS if isinstance(text.get(k), list) and text[k]), None)
    return count


# Lists whose length may equal the layer count by chance.
NOT_PER_LAYER = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id", "suppress_tokens"}


def keep_layers(config: dict, kept: list[int], n: int) -> dict:
    """`config` with only the layers `kept` (ascending, of n), in a multimodal wrapper's text config: every
    per-layer list sliced, lists of layer numbers (`mlp_only_layers`, `hybrid_layer_ids`) renumbered, the layer
    count and `first_k_dense_replace` / `num_dense_layers` (dense blocks first) counted again."""
    if isinstance(config.get("text_config"), dict):
        return {**config, "text_config": keep_layers(config["text_config"], kept, n)}
    out = dict(config)
    for key, value in config.items():
        if not isinstance(value, list) or key in NOT_PER_LAYER:
            continue
        if len(value) == n:
            out[key] = [value[i] for i in kept]
        elif ("layer" in key or "ids" in key) and value and all(type(i) is int and 0 <= i < n for i in value):
            out[key] = [kept.index(i) for i in value if i in kept]
    for key in LAYER_KEYS:
        if isinstance(out.get(key), int):
            out[key] = len(kept)
    for key in ("first_k_dense_replace", "num_dense_layers"):  # the first k layers dense, the rest MoE
        if isinstance(config.get(key), int):
            out[key] = sum(1 for i in kept if i < config[key])
    return out
