"""Per-layer importance of a loaded stock model on calibration windows (forward hooks; windows one at a time;
only running sums are kept): the numbers skipprune.prune.suggest turns into plans."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from ..errors import MeasureError
from ..prune.families import Family
from ..prune.suggest import Importance
from .runner import input_device


def _cos(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1, 1)


def measure_importance(model, family: Family, windows, max_n: int | None = None) -> Importance:
    """`windows`: a (n, seq_len) token tensor (or rows of one). Memory: one window's layer inputs at a time."""
    import torch

    layers = family.layers(model)
    n_layers = len(layers)
    max_n = min(max_n or n_layers, n_layers)
    sums = {k: [0.0] * n_layers for k in ("attention", "mlp", "block")}
    ang = {n: [0.0] * (n_layers - n + 1) for n in range(1, max_n + 1)}
    inputs: list = [None] * (n_layers + 1)
    attn_delta: list = [None] * n_layers
    tokens = 0

    def keep_input(i):
        def hook(module, args, kwargs):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def keep_output(i):
        def hook(module, args, output):
            inputs[i + 1] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def keep_attention(i):
        def hook(module, args, output):
            attn_delta[i] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep_input(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep_output(i)))
        handles.append(getattr(layer, family.attention_out).register_forward_hook(keep_attention(i)))
    try:
        for ids in tqdm(windows, desc="analyze", unit="window", disable=None, leave=False):
            with torch.no_grad():
                model(input_ids=ids.view(1, -1).to(input_device(model)), use_cache=False)
            count = ids.numel()
            tokens += count
            for i in range(n_layers):
                x, y = inputs[i], inputs[i + 1]
                mid = x + attn_delta[i]
                sums["attention"][i] += _cos(x, mid).sum().item()
                sums["mlp"][i] += _cos(mid, y).sum().item()
                sums["block"][i] += _cos(x, y).sum().item()
            for n, dist in ang.items():
                for i in range(n_layers - n + 1):
                    dist[i] += (torch.arccos(_cos(inputs[i], inputs[i + n])) / math.pi).sum().item()
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise MeasureError("no calibration tokens: use a longer --text or more --samples")
    mean = {k: [v / tokens for v in vals] for k, vals in sums.items()}
    return Importance(
        mean["attention"], mean["mlp"], mean["block"], {n: [v / tokens for v in d] for n, d in ang.items()}, tokens
    )
