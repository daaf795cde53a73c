"""Healing on the bundled demo model: how much of the held-out perplexity lost to removal comes back.

Two exports of the demo model (the last 3 of 12 blocks removed; the attention of the last 4 layers removed),
each healed with `distill` (KL to the unpruned model) and with `lm` (next-token loss), LoRA rank 8, on the
training split of Tiny Shakespeare (the first 90 %, what the demo model was trained on; never the held-out
split), scored on the bundled held-out split. Prints a table and writes the curves (held-out perplexity vs
healing tokens) as a PNG.

    python benchmarks/heal.py [--steps 120] [--lr 2e-3] [--png benchmarks/heal.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import skipprune
from skipprune.data import DEMO_MODEL
from skipprune.heal import heal

ROOT = Path(__file__).resolve().parent.parent
PLANS = {"3 blocks removed": dict(drop_blocks="last:3"), "attention of 4 layers removed": dict(drop_attn="last:4")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "heal.png")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_demo import split_text  # the split the demo model was trained with

    train, _ = split_text((ROOT / "scripts" / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    curves, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "tinyshakespeare-train.txt"
        text.write_text(train, encoding="utf-8")
        for label, spec in PLANS.items():
            pruned = Path(tmp) / label.replace(" ", "-")
            skipprune.export(DEMO_MODEL, pruned, **spec)
            for method in ("distill", "lm"):
                start = time.monotonic()
                result = heal(
                    pruned,
                    Path(tmp) / f"{pruned.name}-{method}",
                    text=str(text),
                    teacher=str(DEMO_MODEL),
                    method=method,
                    steps=args.steps,
                    lr=args.lr,
                    eval_every=args.eval_every,
                )
                p = result.record.healing.perplexity
                recovered = (p["pruned"] - p["healed"]) / (p["pruned"] - p["source"])
                rows.append((label, method, p["source"], p["pruned"], p["healed"], recovered, time.monotonic() - start))
                curves[f"{label}, {method}"] = result.curve
    print(f"{'export':<32} {'method':<8} {'source':>7} {'pruned':>7} {'healed':>7} {'recovered':>9} {'wall':>6}")
    for label, method, source, pruned_ppl, healed, recovered, wall in rows:
        print(f"{label:<32} {method:<8} {source:7.2f} {pruned_ppl:7.2f} {healed:7.2f} {recovered:9.0%} {wall:5.0f}s")
    _plot(curves, rows[0][2], args.png)
    print(f"wrote {args.png}")


def _plot(curves: dict, source: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        ax.plot([t / 1000 for t, _ in points], [p for _, p in points], marker="o", label=name)
    ax.axhline(source, color="black", linestyle="--", linewidth=1, label="unpruned demo model")
    ax.set_xlabel("healing tokens (thousands)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("Healing the demo model (LoRA rank 8)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
