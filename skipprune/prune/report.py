"""Running analyze on a model folder: calibration windows, the stdout table, JSON and the PNG plot."""

from __future__ import annotations

from pathlib import Path

from ..errors import SkippruneError
from .analyze import Importance, measure_importance, suggest
from .families import family_for


def calibration_windows(tokenizer, text: str, samples: int, seq_len: int):
    import torch

    ids = torch.tensor(tokenizer(text)["input_ids"])
    count = min(samples, len(ids) // seq_len)
    if count == 0:
        raise SkippruneError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}; use a longer --text")
    return [ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0) for i in range(count)]


def load_stock(model_ref: str, device: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer, family) for a stock model of a supported family, refused before loading otherwise."""
    from ..cards.evaluate import load_model, prepare

    folder, trust, tokenizer, config = prepare(model_ref, device, trust_remote_code)
    if config.get("model_type") == "skipprune":
        raise SkippruneError(f"{model_ref} is already a skipprune export; use the source model instead")
    family = family_for(config.get("model_type"))
    return load_model(folder, trust, device), tokenizer, family


def analyze(model_ref: str, text: str | None = None, samples: int = 32, seq_len: int = 256, device: str = "auto",
            trust_remote_code: bool = False, log=print):  # fmt: skip
    """(Importance, model) of a stock model on calibration text."""
    from ..cards.evaluate import pick_device, read_text

    content, _ = read_text(text)
    model, tokenizer, family = load_stock(model_ref, pick_device(device), trust_remote_code)
    windows = calibration_windows(tokenizer, content, samples, seq_len)
    log(f"measuring {len(windows)} windows of {seq_len} tokens through {len(model.model.layers)} layers ...")
    return measure_importance(model, family, windows), model


def table(imp: Importance) -> str:
    start, end = imp.cold_regions()
    n = len(imp.block_cos)
    lines = [f"{'layer':>5} {'attn cos':>9} {'mlp cos':>9} {'block cos':>9} {'BI':>7} {'ang(l,l+1)':>10}  note"]
    for i in range(n):
        note = "FFN cold" if i < start or i >= n - end else ""
        lines.append(f"{i:>5} {imp.attention_cos[i]:>9.4f} {imp.mlp_cos[i]:>9.4f} {imp.block_cos[i]:>9.4f} "
                     f"{imp.block_influence[i]:>7.4f} {imp.angular[1][i]:>10.4f}  {note}")  # fmt: skip
    lines.append(f"({imp.tokens:,} calibration tokens; FFN cold regions: first {start}, last {end} layers)")
    return "\n".join(lines)


def plot(imp: Importance, path: Path, title: str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SkippruneError("--plot needs matplotlib: pip install 'skipprune[plot]'") from None
    n = len(imp.block_cos)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(n)
    a.plot(x, [1 - c for c in imp.attention_cos], "o-", label="attention: 1 - cos(in, out)")
    a.plot(x, [1 - c for c in imp.mlp_cos], "s-", label="MLP: 1 - cos(in, out)")
    a.plot(x, imp.block_influence, "^-", label="block influence (ShortGPT)")
    start, end = imp.cold_regions()
    for lo, hi in ((0, start), (n - end, n)):
        if hi > lo:
            a.axvspan(lo - 0.5, hi - 0.5, color="grey", alpha=0.15)
    a.set(xlabel="layer (source numbering)", ylabel="how much the sublayer changes the residual stream", yscale="log")
    a.legend(fontsize=8)
    a.set_title("per-layer importance (grey: FFN cold regions)", fontsize=10)
    for n_win, dist in sorted(imp.angular.items())[:: max(1, len(imp.angular) // 6)]:
        b.plot(range(len(dist)), dist, label=f"n = {n_win}")
    b.set(xlabel="first layer l of the window", ylabel="angular distance between layer l and l+n inputs")
    b.legend(fontsize=8)
    b.set_title("Gromov et al.: smallest distance = best window to remove", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def block_params(model) -> tuple[int, int]:
    layer = model.model.layers[0]
    return sum(p.numel() for p in layer.parameters()), sum(p.numel() for p in model.parameters())


__all__ = ["analyze", "table", "plot", "suggest", "block_params"]
