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


def alternating_medians(runs: list, repeats: int = 7) -> list[float]:
    """Median wall seconds of each callable; they take turns within every repeat (after one warm-up round)
    so drift in machine speed hits them equally."""
    times: list[list[float]] = [[] for _ in runs]
    for r in range(repeats + 1):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            run()
            if r:
                times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def prompt_batch(model, batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    return torch.randint(0, vocab, (batch, length), generator=g).to(model.device)


@torch.no_grad()
def predict_one_token(model, ids: torch.Tensor) -> None:
    model(input_ids=ids, use_cache=False, logits_to_keep=1)
    _sync(model)


def interleaved_latency(models: list, batch: int, length: int, repeats: int = 7) -> list[float]:
    """Median seconds to predict the next token for `batch` prompts of `length` tokens (prefill)."""
    batches = [prompt_batch(m, batch, length) for m in models]
    return alternating_medians([lambda m=m, x=x: predict_one_token(m, x) for m, x in zip(models, batches)], repeats)


@torch.no_grad()
def interleaved_decode(models: list, tokens: int = 128, repeats: int = 3) -> list[float]:
    """Median greedy decode speed (tokens/s) of a `tokens`-token generation from a short prompt."""
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)

    def run(model):
        model.generate(ids.to(model.device), **kw)
        _sync(model)

    seconds = alternating_medians([lambda m=m: run(m) for m in models], repeats)
    return [tokens / s for s in seconds]


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def speed(models: list, batch: int = 8) -> list[dict]:
    """Tyukin et al. 2024 section 3.3 (1-token latency at prompt lengths 50 and 100) plus decode speed."""
    out = [{} for _ in models]
    for length in (50, 100):
        for d, t in zip(out, interleaved_latency(models, batch, length)):
            d[f"one_token_s_batch{batch}_len{length}"] = t
    for d, rate, model in zip(out, interleaved_decode(models), models):
        d["decode_tokens_per_s"] = rate
        d["peak_generation_memory_bytes"] = peak_generation_memory(model)
        d["device"] = str(model.device)
        d["dtype"] = str(model.dtype).replace("torch.", "")
    return out


@torch.no_grad()
def peak_generation_memory(model, tokens: int = 128) -> int | None:
    """Peak device memory while generating `tokens` tokens, where the device reports it (CUDA); else None."""
    if model.device.type != "cuda":
        return None
    torch.cuda.synchronize(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], device=model.device)
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return torch.cuda.max_memory_allocated(model.device)


def measure(model, folder: Path | None, ids: torch.Tensor | None, seq_len: int, text_name: str) -> dict:
    """Everything but speed about one model, in the results schema."""
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
    return result


def results(model_id: str, after: dict, baseline: dict | None = None, baseline_id: str | None = None) -> dict:
    out = {"schema_version": SCHEMA_VERSION, "model": model_id, **after}
    if baseline is not None:
        out["baseline"] = {"model": baseline_id, **baseline}
    return out
