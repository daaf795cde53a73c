"""search.png: the objective after each step of a plan search, labelled with each step's move, for the model
card and `skipprune search --plot`. Drawn from the record alone (matplotlib's non-interactive backend)."""

from __future__ import annotations

from pathlib import Path

from ..records import PlanSearch


def write_search_png(search: PlanSearch, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = search.steps
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot([s.step for s in steps], [s.objective for s in steps], marker="o", color="#1f77b4")
    for s in steps:
        label = s.move.replace("remove ", "−").replace("swap: restore ", "swap +").replace(", remove ", " −")
        ax.annotate(label, (s.step, s.objective), textcoords="offset points", xytext=(4, -10), fontsize=7)
    unit = "KL from the source (nats/token)" if search.objective == "kl" else "next-token loss (nats/token)"
    ax.set_xlabel("search step (greedy removals, then swaps)")
    ax.set_ylabel(unit + ", lower is better")
    what = f"{', '.join(search.budgets)} on {search.windows}×{search.seq_len} tokens of {search.text}"
    ax.set_title(f"{title}: {what}"[:110], fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return Path(path)
