"""Healing: how much of the held-out perplexity lost to removal comes back, per objective and recipe, at the same
token budget.

Exports of the model (demo: the last 3 of 12 blocks removed, and the attention of the last 4 layers removed; a
real model: the last quarter of its blocks removed, the setting of "Reassessing Layer Pruning", 2026), each
healed by `distill` (KL to the unpruned model) and by `lm` (next-token loss), with LoRA (rank 8, merged) and
with `--train last:K,head` (the LM head and the last K kept blocks, fully), on the training split of Tiny
Shakespeare (what the demo model was trained on; never the held-out split), scored on the bundled held-out
split. Prints a table and writes the curves (held-out perplexity vs healing tokens) as a PNG.

    python benchmarks/heal.py [--steps 120] [--lr 2e-3] [--png benchmarks/heal.png]        # the demo model
    python benchmarks/heal.py --model smollm2 --steps 40 --batch 4 --png benchmarks/heal-smollm2.png

--model: demo, smollm2 (see real_model.py), or any local folder or Hub id. --lr applies to LoRA; --train-lr to
--train (default: each recipe's own default, 2e-4 and 2e-5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import skipprune
from skipprune.heal import heal

sys.path.insert(0, str(Path(__file__).parent))
from real_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLANS = {"3 blocks removed": dict(drop_blocks="last:3"), "attention of 4 layers removed": dict(drop_attn="last:4")}
REAL_PLANS = {"last 25% of blocks removed": dict(drop_blocks="last:25%")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--train-lr", type=float)
    ap.add_argument("--train", default="last:3,head", help="the --train recipe compared with LoRA")
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "heal.png")
    args = ap.parse_args()
    model = resolve_model(args.model)
    lora_lr = args.lr if args.lr is not None else (2e-3 if args.model == "demo" else None)
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_demo import split_text  # the split the demo model was trained with

    train, _ = split_text((ROOT / "scripts" / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    recipes = {
        "LoRA 8": dict(lora_rank=8, lr=lora_lr),
        f"--train {args.train}": dict(lora_rank=None, train=args.train, lr=args.train_lr),
    }
    curves, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "tinyshakespeare-train.txt"
        text.write_text(train, encoding="utf-8")
        for label, spec in (DEMO_PLANS if args.model == "demo" else REAL_PLANS).items():
            pruned = Path(tmp) / label.replace(" ", "-").replace("%", "")
            skipprune.export(model, pruned, **spec)
            for method in ("distill", "lm"):
                for recipe, options in recipes.items():
                    start = time.monotonic()
                    result = heal(
                        pruned,
                        Path(tmp) / f"{pruned.name}-{method}-{len(rows)}",
                        text=str(text),
                        teacher=model,
                        method=method,
                        steps=args.steps,
                        batch=args.batch,
                        eval_every=args.eval_every,
                        **options,
                    )
                    h = result.record.healing
                    p = h.perplexity
                    recovered = (p["pruned"] - p["healed"]) / (p["pruned"] - p["source"])
                    row = (label, method, recipe, h.lr, p["source"], p["pruned"], p["healed"], recovered)
                    rows.append((*row, h.tokens, time.monotonic() - start))
                    curves[f"{label}, {method}, {recipe}"] = result.curve
    print(f"model: {Path(model).name}, {args.steps} steps of {args.batch} x 128 tokens")
    print("| export | method | recipe | lr | source | pruned | healed | share of the loss recovered | tokens | wall |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, method, recipe, lr, source, pruned_ppl, healed, recovered, tokens, wall in rows:
        print(
            f"| {label} | {method} | {recipe} | {lr:g} | {source:.2f} | {pruned_ppl:.2f} | {healed:.2f} | "
            f"{recovered:.0%} | {tokens:,} | {wall:.0f} s |"
        )
    _plot(curves, rows[0][4], args.png, Path(model).name)
    print(f"wrote {args.png}")


def _plot(curves: dict, source: float, png: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        ax.plot([t / 1000 for t, _ in points], [p for _, p in points], marker="o", label=name)
    ax.axhline(source, color="black", linestyle="--", linewidth=1, label=f"unpruned {name}")
    ax.set_xlabel("healing tokens (thousands)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"Healing {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
