"""Token-level perplexity over non-overlapping windows (the convention of LLM-Pruner / Shortened LLaMA): every
token of a window but its first is predicted, so every prediction sees at most `seq_len - 1` tokens."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from ..records import PerplexityProtocol
from .runner import input_device


def perplexity(model, windows, text_name: str) -> tuple[float, PerplexityProtocol]:
    """exp(mean NLL) of `model` over `windows` (a (n, seq_len) token tensor), and the protocol used."""
    import torch

    n, seq_len = windows.shape
    nll = 0.0
    with torch.no_grad(), tqdm(total=n, desc="perplexity", unit="window", disable=None, leave=False) as bar:
        for w in range(n):
            chunk = windows[w : w + 1].to(input_device(model))
            logits = model(input_ids=chunk, use_cache=False).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum").item()
            bar.update(1)
    count = n * (seq_len - 1)
    protocol = PerplexityProtocol(
        text=text_name, tokens=n * seq_len, windows=n, seq_len=seq_len, predicted_tokens=count, unit="token"
    )
    return math.exp(nll / count), protocol
