"""PNG plots of analyze and sweep results (matplotlib, non-interactive backend)."""

from __future__ import annotations

from pathlib import Path

from ..prune.suggest import KINDS, Importance


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_labels(ax) -> None:
    """Tick labels on a log y axis as plain numbers (40, 1,000), not 4 × 10¹; the ticks between powers of ten
    are labelled too when the data span less than a decade (call after plotting)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    low, high = ax.dataLim.intervaly
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if low > 0 and high / low < 10 else NullFormatter())


def plot_importance(imp: Importance, path: Path, title: str, text: str | None = None) -> Path:
    return _save(importance_figure(imp, title, text), path)


def plot_sweep(rows, path: Path, title: str) -> Path:
    return _save(sweep_figure(rows, title), path)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def importance_figure(imp: Importance, title: str, text: str | None = None):
    """`text`: what the importance was measured on, named in the title."""
    plt = _pyplot()
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
    a.set(
        xlabel="layer (source numbering)",
        ylabel="change to the residual stream (lower = safer to remove)",
        yscale="log",
    )
    _plain_log_labels(a)
    a.legend(fontsize=8)
    a.set_title("per-layer importance: lower is safer to remove (grey: FFN cold regions)", fontsize=10)
    for n_win, dist in sorted(imp.angular.items())[:: max(1, len(imp.angular) // 6)]:
        b.plot(range(len(dist)), dist, label=f"n = {n_win}")
    b.set(xlabel="first layer l of the window", ylabel="angular distance between layer l and l+n inputs")
    b.legend(fontsize=8)
    b.set_title("Gromov et al.: smallest distance = best window to remove", fontsize=10)
    fig.suptitle(f"{title}, on {imp.tokens:,} tokens of {text}" if text else title, fontsize=11)
    fig.tight_layout()
    return fig


def sweep_figure(rows, title: str):
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    base = rows[0]
    for kind, color in zip(KINDS, ("tab:blue", "tab:orange", "tab:green")):
        for keep_last, style in ((False, "-o"), (True, "--s")):
            pts = [(100, base.perplexity, 1.0)] + [
                (r.kept_percent, r.perplexity, r.latency_ratio)
                for r in rows
                if r.kind == kind and r.keep_last_layer == keep_last
            ]
            label = f"{kind}{' (final layer kept)' if keep_last else ''}"
            a.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label)
            if all(p[2] for p in pts):
                b.plot([p[0] for p in pts], [p[2] for p in pts], style, color=color, label=label)
    proto = base.perplexity_protocol
    a.set(xlabel="% of layers keeping the sublayer", ylabel=f"perplexity ({proto.seq_len}-token windows)", yscale="log")
    _plain_log_labels(a)
    a.invert_xaxis()
    a.legend(fontsize=7)
    b.set(xlabel="% of layers keeping the sublayer", ylabel="1-token latency / full model")
    if not b.lines:
        b.text(0.5, 0.5, "latency not measured (--no-speed)", ha="center", va="center", transform=b.transAxes)
    b.invert_xaxis()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
