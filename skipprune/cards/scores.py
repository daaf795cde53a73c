"""Measurements of a model, before and after pruning, as one versioned results dict (the card reads it).

Perplexity is token-level over non-overlapping windows (the convention of LLM-Pruner / Shortened LLaMA):
the text is tokenized once, cut into windows of `seq_len` tokens, and every token but each window's first
is predicted. KV bytes per token are read from a real cache after a forward pass, not computed from the
config. Speed follows Tyukin et al. (2024) section 3.3: time to predict one token for a batch of prompts
of a given length, median of repeats after a warm-up.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

SCHEMA_VERSION = 1


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seq_len: int, text_name: str) -> tuple[float, dict]:
    """exp(mean NLL) over the non-overlapping windows of a 1-D token tensor; the tail shorter than a window is
    dropped so every prediction sees the same maximum context."""
    windows = len(ids) // seq_len
    if windows == 0:
        from ..errors import SkippruneError

        raise SkippruneError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}; use a longer text or --seq-len")
    nll, count = 0.0, 0
    for w in range(windows):
        chunk = ids[w * seq_len : (w + 1) * seq_len].unsqueeze(0)
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum").item()
        count += seq_len - 1
    protocol = {"text": text_name, "tokens": windows * seq_len, "windows": windows, "seq_len": seq_len,
                "predicted_tokens": count, "unit": "token"}  # fmt: skip
    return math.exp(nll / count), protocol


@torch.no_grad()
def kv_bytes_per_token(model, tokens: int = 8) -> int:
    ids = torch.zeros(1, tokens, dtype=torch.long, device=model.device)
    cache = model(input_ids=ids, use_cache=True).past_key_values
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total // tokens


@torch.no_grad()
def one_token_latency(model, batch: int, length: int, repeats: int = 7) -> float:
    """Median seconds to predict the next token for `batch` prompts of `length` tokens (prefill)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.get_text_config().vocab_size, (batch, length), generator=g).to(model.device)
    model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, folder: Path | None, ids: torch.Tensor | None, seq_len: int, text_name: str,
            speed: bool = True, batch: int = 8) -> dict:  # fmt: skip
    """Everything skipprune reports about one model, as the results schema."""
    model.eval()
    result: dict = {
        "params": count_params(model),
        "disk_bytes": disk_bytes(folder) if folder else None,
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "perplexity": None,
        "perplexity_protocol": None,
        "speed": {},
        "tasks": {},
    }
    if ids is not None:
        result["perplexity"], result["perplexity_protocol"] = perplexity(model, ids, seq_len, text_name)
    if speed:
        result["speed"] = {
            f"one_token_s_batch{batch}_len{n}": one_token_latency(model, batch, n) for n in (50, 100)
        }
        result["speed"]["device"] = str(model.device)
        result["speed"]["dtype"] = str(model.dtype).replace("torch.", "")
    return result


def results(model_id: str, after: dict, baseline: dict | None = None, baseline_id: str | None = None) -> dict:
    out = {"schema_version": SCHEMA_VERSION, "model": model_id, **after}
    if baseline is not None:
        out["baseline"] = {"model": baseline_id, **baseline}
    return out
