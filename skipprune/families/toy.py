"""Toy-size instances of a family: its own config and options, small sizes, a few layers of every kind.

The generic shrink (sizes from `_SMALL`, `layers` layers kept) fits most families; the ones whose configs couple
sizes or place kinds of layer by rule get a quirk each, in `QUIRKS`: when it applies, and what it sets.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

from .config import LAYER_KEYS, NOT_PER_LAYER, keep_layers, layer_count

# Sizes small enough for a random model of any family to build in a blink.
TOY_LAYERS = 4

_SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "n_group": 1,
    "topk_group": 1,
    "sliding_window": 8,
    "n_embd": 64,
    "n_head": 4,
    "n_inner": 128,
    "ffn_hidden_size": 128,
}

_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _toy_layers(config: dict, n: int, layers: int) -> list[int]:
    """Which of the n layers a toy keeps: where a per-layer pattern names kinds of layer (full and linear
    attention, hybrid, ...), the first layer of each kind, then the next one of each kind in turn (so that
    removing one layer's attention leaves another), then the first layers; a hybrid toy stays hybrid."""
    of_kind: dict = {}
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n and key not in NOT_PER_LAYER:
            for i, kind in enumerate(value):
                if isinstance(kind, str):
                    of_kind.setdefault((key, kind), []).append(i)
    keep: list[int] = []
    for turn in range(2):
        for indices in of_kind.values():
            if len(indices) > turn and indices[turn] not in keep and len(keep) < layers:
                keep.append(indices[turn])
    return sorted(keep + [i for i in range(n) if i not in keep][: layers - len(keep)])


def _ints(config: dict, *keys: str) -> bool:
    return all(isinstance(config.get(k), int) for k in keys)


def _mamba2_heads(out: dict) -> None:
    out["mamba_d_head"] = 16
    out["mamba_n_heads"] = out["mamba_expand"] * out["hidden_size"] // 16
    if isinstance(out.get("mamba_d_ssm"), int):  # Falcon-H1 states the mixer's width too
        out["mamba_d_ssm"] = out["mamba_expand"] * out["hidden_size"]


def _lfm2_pattern(out: dict, layers: int) -> None:
    out["layer_types"] = ["conv", "full_attention"] * (layers // 2) + ["conv"] * (layers % 2)
    if "full_attn_idxs" in out:
        out["full_attn_idxs"] = [i for i, kind in enumerate(out["layer_types"]) if kind == "full_attention"]


def _mla_heads(out: dict) -> None:
    out["head_dim"] = out["qk_rope_head_dim"]
    out.pop("qk_head_dim", None)


@dataclass(frozen=True)
class Quirk:
    """A family whose toy needs more than smaller sizes: `applies(source config, toy config)`, `fix(toy, layers)`."""

    families: str  # which (for the reader)
    why: str
    applies: Callable[[dict, dict], bool]
    fix: Callable[[dict, int], None]


QUIRKS = (
    Quirk(
        "jamba",
        "attention and experts placed by period and offset: attention in layers 0 and 2, experts in layer 3, so the "
        "toy has attention, Mamba and MoE blocks, and one attention layer left when another loses its own",
        lambda c, out: _ints(out, "attn_layer_period", "expert_layer_period"),
        lambda out, n: out.update(
            attn_layer_period=2, attn_layer_offset=0, expert_layer_period=4, expert_layer_offset=3
        ),
    ),
    Quirk(
        "bamba",
        "no attention by default: the toy gets both kinds, and two attention layers so one can lose its own",
        lambda c, out: "attn_layer_indices" in c and not out.get("attn_layer_indices"),
        lambda out, n: out.update(attn_layer_indices=[n // 2, n - 1]),
    ),
    Quirk(
        "families without grouped queries",
        "as many key-value heads as query heads: the toy keeps it so",
        lambda c, out: c.get("num_key_value_heads") == c.get("num_attention_heads") and "num_key_value_heads" in out,
        lambda out, n: out.update(num_key_value_heads=out["num_attention_heads"]),
    ),
    Quirk(
        "bamba, granite-4 hybrid, falcon_h1",
        "Mamba-2 mixers check that heads x head size = expand x hidden size",
        lambda c, out: _ints(out, "mamba_expand", "mamba_n_heads", "mamba_d_head"),
        lambda out, n: _mamba2_heads(out),
    ),
    Quirk(
        "zamba2",
        "the Mamba head size is derived from the others",
        lambda c, out: _ints(out, "mamba_expand", "n_mamba_heads", "mamba_headdim"),
        lambda out, n: out.update(mamba_headdim=out["mamba_expand"] * out["hidden_size"] // out["n_mamba_heads"]),
    ),
    Quirk(
        "zamba",
        "the shared attention reads the concatenation of the residual stream and the embeddings",
        lambda c, out: isinstance(out.get("attention_hidden_size"), int),
        lambda out, n: out.update(attention_hidden_size=2 * out["hidden_size"]),
    ),
    Quirk(
        "granite-4 hybrid",
        "every layer Mamba-2 by default, attention in some layers of real models: the toy gets two attention layers "
        "(one left when the other loses its own)",
        lambda c, out: set(out.get("layer_types") or ()) == {"linear_attention"},
        lambda out, n: out.update(layer_types=["linear_attention"] * (n - 2) + ["full_attention"] * 2),
    ),
    Quirk(
        "lfm2",
        "models mix short convolutions and attention; defaults may have only one kind (or none spelt out)",
        lambda c, out: "conv_L_cache" in out and len(set(out.get("layer_types") or ())) < 2,
        _lfm2_pattern,
    ),
    Quirk(
        "gemma3n",
        "the last layers reuse the cache of the last earlier layer of their type: the toy keeps one such layer",
        lambda c, out: isinstance(out.get("num_kv_shared_layers"), int) and isinstance(out.get("layer_types"), list),
        lambda out, n: out.update(
            num_kv_shared_layers=1 if set(out["layer_types"][:-1]) == set(out["layer_types"]) else 0
        ),
    ),
    Quirk(
        "multi-head latent attention (deepseek_v3, ...)",
        "head sizes derived from the rotary part",
        lambda c, out: isinstance(out.get("qk_rope_head_dim"), int),
        lambda out, n: _mla_heads(out),
    ),
)


def shrink(config: dict, layers: int = TOY_LAYERS) -> dict:
    """The same family and options at toy size: sizes from a small table where the config has them, `layers`
    layers kept (see _toy_layers), the family's quirks applied, token ids kept inside the small vocabulary."""
    out = {k: v for k, v in config.items() if v is not None and k not in ("transformers_version", "auto_map")}
    for key, value in out.items():  # the parts of a multimodal wrapper: language model, vision tower, ...
        if isinstance(value, dict) and key.endswith("_config") and "model_type" in value:
            out[key] = shrink(value, layers if key == "text_config" else 1)
    if "text_config" in out:
        return out
    if n := layer_count(out):
        out = keep_layers(out, _toy_layers(out, n, layers), n)
    for key in LAYER_KEYS:  # `layers` layers even where the default has fewer (bloom: 2)
        if isinstance(out.get(key), int):
            out[key] = layers
    for key, value in out.items():
        if key in _SMALL and isinstance(value, int) and not isinstance(value, bool):
            out[key] = _SMALL[key]
    for quirk in QUIRKS:
        if quirk.applies(config, out):
            quirk.fix(out, layers)
    vocab = out.get("vocab_size", 256)
    for key in _TOKEN_KEYS:
        ids = out.get(key)
        if isinstance(ids, int) and ids >= vocab:
            out[key] = vocab - 1
        elif isinstance(ids, list):
            out[key] = [i if i < vocab else vocab - 1 for i in ids]
    return out


@functools.lru_cache(maxsize=1)
def tiny_model(model_type: str, config_json: str, layers: int = TOY_LAYERS):
    """A random instance of the family at toy size (`shrink`), seeded, in eval mode; the last one is kept for
    the next study of the same family (callers copy it before changing it)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in shrink(json.loads(config_json), layers).items() if k != "model_type"}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()


@contextlib.contextmanager
def quiet():
    """transformers' warnings off while a tiny model is studied: they would be about the toy (a missing fast
    kernel for linear attention, ...), printed before the command's own first line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
