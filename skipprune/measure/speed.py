"""Sizes and speed of a loaded model.

KV bytes per token are read from a real cache after a forward pass, not computed from the config. Speed
follows Tyukin et al. (2024) section 3.3: time to predict one token for a batch of prompts of a given length,
median of repeats after a warm-up; plus greedy decode speed. Several models are timed taking turns, so drift
in machine speed hits them equally.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..records import Latency, Speed
from .runner import input_device, placement

PROMPT_LENGTHS = (50, 100)
BATCH = 8
DECODE_TOKENS = 128


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def cache_of(output):
    """The KV cache of a forward pass (transformers 5.24 renamed `past_key_values` to `cache`)."""
    return getattr(output, "cache", None) if "cache" in output.keys() else output.past_key_values


def kv_bytes_per_token(model, tokens: int = 8) -> int:
    import torch

    ids = torch.zeros(1, tokens, dtype=torch.long, device=input_device(model))
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, use_cache=True))
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total // tokens


def alternating_times(runs: list, repeats: int = 7) -> list[list[float]]:
    """Wall seconds of each callable in every repeat; they take turns within every repeat (after one warm-up
    round)."""
    times: list[list[float]] = [[] for _ in runs]
    for r in range(repeats + 1):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            run()
            if r:
                times[k].append(time.perf_counter() - start)
    return times


def relative_spread(times: list[float]) -> float:
    """Interquartile range of the repeats over their median: a difference between two models smaller than
    this is noise, not an effect."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(times)


def prompt_batch(model, batch: int, length: int):
    import torch

    g = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    return torch.randint(0, vocab, (batch, length), generator=g).to(input_device(model))


def predict_one_token(model, ids) -> None:
    import torch

    with torch.no_grad():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    _sync(model)


def interleaved_latency(models: list, batch: int, length: int, repeats: int = 7) -> list[list[float]]:
    """Seconds to predict the next token for `batch` prompts of `length` tokens (prefill), every repeat."""
    batches = [prompt_batch(m, batch, length) for m in models]
    return alternating_times([lambda m=m, x=x: predict_one_token(m, x) for m, x in zip(models, batches)], repeats)


def interleaved_decode(models: list, tokens: int = DECODE_TOKENS, repeats: int = 3) -> list[list[float]]:
    """Seconds of a greedy `tokens`-token generation from a short prompt, every repeat."""
    import torch

    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)

    def run(model):
        with torch.no_grad():
            model.generate(ids.to(input_device(model)), **kw)
        _sync(model)

    return alternating_times([lambda m=m: run(m) for m in models], repeats)


def _sync(model) -> None:
    if input_device(model).type == "cuda":
        import torch

        torch.cuda.synchronize()  # every GPU: a device_map may spread the model over several


def speed(models: list, batch: int = BATCH) -> list[Speed]:
    """Tyukin et al. 2024 section 3.3 (1-token latency at prompt lengths 50 and 100) plus decode speed, the
    models taking turns."""
    import torch

    out = [
        Speed(
            device=placement(m),
            dtype=str(m.dtype).replace("torch.", ""),
            decode_tokens=DECODE_TOKENS,
            threads=torch.get_num_threads() if input_device(m).type == "cpu" else None,
        )
        for m in models
    ]
    for length in PROMPT_LENGTHS:
        for s, t in zip(out, interleaved_latency(models, batch, length)):
            s.latency.append(
                Latency(
                    batch=batch, prompt_tokens=length, seconds=statistics.median(t), spread=round(relative_spread(t), 4)
                )
            )
    for s, t, model in zip(out, interleaved_decode(models), models):
        s.decode_tokens_per_s = DECODE_TOKENS / statistics.median(t)
        s.decode_spread = round(relative_spread(t), 4)
        s.peak_generation_memory_bytes = peak_generation_memory(model)
    return out


def peak_generation_memory(model, tokens: int = DECODE_TOKENS) -> int | None:
    """Peak device memory while generating `tokens` tokens, where the device reports it (CUDA); else None."""
    device = input_device(model)
    if device.type != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]], device=device)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return torch.cuda.max_memory_allocated(device)
