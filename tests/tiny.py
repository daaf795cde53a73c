"""Tiny random checkpoints of every supported family, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
EXTRA = {
    "llama": dict(tie_word_embeddings=True),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=3),
    "qwen3": dict(head_dim=8),
    "phi3": dict(pad_token_id=0),
    "gemma2": dict(head_dim=8, sliding_window=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "gemma3_text": dict(head_dim=8, sliding_window=8, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
    "olmo2": dict(),
}
FAMILY_NAMES = sorted(EXTRA)


def make_model(folder: Path, family: str, dtype=torch.float32, seed: int = 0, **overrides) -> Path:
    """Save a random tiny `family` model (safetensors) into folder; norms get random weights too."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **{**COMMON, **EXTRA[family], **overrides})
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # default-initialised norms are all ones/zeros: randomise so bugs show
                p.copy_(torch.randn_like(p) * 0.1 + (0 if family.startswith("gemma") else 1))
    model.save_pretrained(folder)
    return Path(folder)
