"""Token-level perplexity over non-overlapping windows (the convention of LLM-Pruner / Shortened LLaMA): every
token of a window but its first is predicted, so every prediction sees at most `seq_len - 1` tokens."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from ..records import PerplexityProtocol
from .runner import input_device
from .stream import LayerMajor, offloaded


def perplexity(model, windows, text_name: str, layer_major: bool | None = None) -> tuple[float, PerplexityProtocol]:
    """exp(mean NLL) of `model` over `windows` (a (n, seq_len) token tensor), and the protocol used. A model whose
    weights accelerate keeps on disk (or `layer_major=True`) runs block by block over all windows (stream.py):
    the same numbers, every weight read once."""
    import torch

    n, seq_len = windows.shape
    layer_major = offloaded(model) if layer_major is None else layer_major
    chunks = [windows[w : w + 1].to(input_device(model)) for w in range(n)]
    nll = 0.0
    with torch.no_grad(), tqdm(total=n, desc="perplexity", unit="window", disable=None, leave=False) as bar:

        def add(w: int, logits) -> None:
            nonlocal nll
            logits, target = logits.float(), chunks[w][0, 1:].to(logits.device)
            nll += torch.nn.functional.cross_entropy(logits[0, :-1], target, reduction="sum").item()
            bar.update(1)

        if layer_major:
            run = LayerMajor(model, chunks, desc="perplexity")
            run.run()
            run.logits(add)
        else:
            for w, chunk in enumerate(chunks):
                add(w, model(input_ids=chunk, use_cache=False).logits)
    count = n * (seq_len - 1)
    protocol = PerplexityProtocol(
        text=text_name,
        tokens=n * seq_len,
        windows=n,
        seq_len=seq_len,
        predicted_tokens=count,
        unit="token",
        schedule="block by block" if layer_major else "window by window",
    )
    return math.exp(nll / count), protocol
