"""Per-layer importance of a loaded stock model on calibration windows: the numbers skipprune.prune.suggest
turns into plans. Two schedules, the same sums in the same order: window after window through the whole
model (forward hooks; one window's layer inputs at a time), or block after block over all windows (stream.py,
for weights kept on disk; the layer inputs that later angular distances need wait in a temporary file)."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from ..errors import MeasureError
from ..prune.family import Family
from ..prune.suggest import Importance
from .runner import input_device
from .stream import LayerMajor, offloaded


def _cos(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1, 1)


def measure_importance(
    model, family: Family, windows, max_n: int | None = None, layer_major: bool | None = None
) -> Importance:
    """`windows`: a (n, seq_len) token tensor (or rows of one). Layer-major when accelerate keeps weights on
    disk, or when asked."""
    n_layers = len(family.layers(model))
    max_n = min(max_n or n_layers, n_layers)
    sums = {k: [0.0] * n_layers for k in ("attention", "mlp", "block")}
    ang = {n: [0.0] * (n_layers - n + 1) for n in range(1, max_n + 1)}
    run = _layer_major if (offloaded(model) if layer_major is None else layer_major) else _window_major
    tokens = run(model, family, windows, sums, ang)
    if tokens == 0:
        raise MeasureError("no calibration tokens: use a longer --text or more --samples")
    mean = {k: [v / tokens for v in vals] for k, vals in sums.items()}
    mixers = [family.at(i).mixer for i in range(n_layers)] if family.mixer_noun != "attention" else []
    return Importance(
        mean["attention"],
        mean["mlp"],
        mean["block"],
        {n: [v / tokens for v in d] for n, d in ang.items()},
        tokens,
        mixers,
    )


def _window_major(model, family: Family, windows, sums: dict, ang: dict) -> int:
    import torch

    layers = family.layers(model)
    n_layers = len(layers)
    inputs: list = [None] * (n_layers + 1)
    attn_delta: list = [None] * n_layers
    tokens = 0

    def keep_input(i):
        def hook(module, args, kwargs):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()
            attn_delta[i] = None  # the mixer's hooks below add their outputs up for this call of the block

        return hook

    def keep_output(i):
        def hook(module, args, output):
            inputs[i + 1] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def keep_attention(i):
        def hook(module, args, output):  # a mixer of parallel modules adds each one's output
            out = (output[0] if isinstance(output, tuple) else output).detach()
            attn_delta[i] = out if attn_delta[i] is None else attn_delta[i] + out

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep_input(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep_output(i)))
        for out in family.at(i).attention_outs:
            handles.append(getattr(layer, out).register_forward_hook(keep_attention(i)))
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
    return tokens


def _layer_major(model, family: Family, windows, sums: dict, ang: dict) -> int:
    import torch

    layers = family.layers(model)
    chunks = [ids.view(1, -1).to(input_device(model)) for ids in windows]
    if not chunks:
        return 0
    attn_delta: list = [None]
    handles = []

    def keep_attention(module, args, output):
        out = (output[0] if isinstance(output, tuple) else output).detach()
        attn_delta[0] = out if attn_delta[0] is None else attn_delta[0] + out

    with _History(len(chunks)) as history:

        def observe(i, b, x, y):
            # block inputs that a later block's distance reads back: never the last block's output
            if i == 0 and len(ang) > 1:
                history.put(0, b, x)
            if i + 1 < len(layers) and len(ang) > 1:
                history.put(i + 1, b, y)
            mid = x + attn_delta[0]
            sums["attention"][i] += _cos(x, mid).sum().item()
            sums["mlp"][i] += _cos(mid, y).sum().item()
            sums["block"][i] += _cos(x, y).sum().item()
            for n, dist in ang.items():
                if i + 1 - n >= 0:
                    earlier = x if n == 1 else history.get(i + 1 - n, b).to(y.device)
                    dist[i + 1 - n] += (torch.arccos(_cos(earlier, y)) / math.pi).sum().item()

        def new_call(module, args):
            attn_delta[0] = None  # the mixer's hooks add their outputs up for this call of the block

        handles = [layer.register_forward_pre_hook(new_call) for layer in layers] + [
            getattr(layer, out).register_forward_hook(keep_attention)
            for i, layer in enumerate(layers)
            for out in family.at(i).attention_outs
        ]
        try:
            LayerMajor(model, chunks, desc="analyze").run(observe)
        finally:
            for h in handles:
                h.remove()
    return sum(c.numel() for c in chunks)


class _History:
    """Every block input of every window, in fp32, in a temporary file: the angular distance between blocks i
    and i+n needs block i's input long after block i ran, and holding all of them would take n_layers times the
    hidden states of the calibration set (4 GiB for 32 x 256 tokens of a 7B model)."""

    def __init__(self, windows: int):
        self.windows = windows
        self.slot: int | None = None

    def __enter__(self):
        import tempfile

        self.file = tempfile.TemporaryFile(prefix="skipprune-analyze-")
        return self

    def __exit__(self, *exc):
        self.file.close()

    def put(self, i: int, b: int, x) -> None:
        data = x.detach().float().cpu().contiguous().numpy()
        if self.slot is None:
            self.slot, self.shape = data.nbytes, data.shape
        self.file.seek((i * self.windows + b) * self.slot)
        self.file.write(memoryview(data).cast("B"))

    def get(self, i: int, b: int):
        import numpy as np
        import torch

        out = np.empty(self.shape, dtype=np.float32)
        self.file.seek((i * self.windows + b) * self.slot)
        self.file.readinto(memoryview(out).cast("B"))
        return torch.from_numpy(out)
