"""Plan search against one-shot strategies at equal budget, on a real pretrained model and on the demo model.

For each budget, `skipprune search` runs in its own process (so its peak memory is its own), calibrated on the
training split of Tiny Shakespeare (everything before the bundled held-out split) and scored on the held-out
split, which it never sees: the found plan, greedy's plan before the swap pass, the last layers (Tyukin et
al.), the candidates cheapest when removed alone (measured), the least important by analyze's metrics and the
best window of blocks, all at the same budget. `skipprune analyze` on the same calibration windows gives the
memory to compare with.

    python benchmarks/search_quality.py --model smollm2 --budgets attn:33%,params:15%,params:25%
    python benchmarks/search_quality.py --model smollm2 --budgets attn:33% --variant exact  # greedy, no screen
    python benchmarks/search_quality.py --model demo

--model: smollm2 (SmolLM2-135M-Instruct, see real_model.py), demo, or any local folder or Hub id.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from real_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"default": [], "exact": ["--screen", "0", "--no-swap"], "no-swap": ["--no-swap"]}


def training_split(folder: Path) -> Path:
    """Tiny Shakespeare before the bundled held-out split: what the demo model was trained on."""
    full = (ROOT / "scripts" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    held = (ROOT / "skipprune" / "data" / "heldout.txt").read_text(encoding="utf-8")
    path = folder / "tinyshakespeare-train.txt"
    path.write_text(full[: full.rindex(held[:200])], encoding="utf-8")
    return path


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process."""
    import time

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    sys.stderr.write(err[-2000:])
    print(out)
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--budgets", default="attn:33%,params:15%,params:25%")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--eval-seq-len", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/search", help="folder for the plan files and plots (kept)")
    args = ap.parse_args()
    model = resolve_model(args.model)
    name = Path(model).name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("skipprune") or "skipprune"
    with tempfile.TemporaryDirectory() as tmp:
        text = str(training_split(Path(tmp)))
        common = ["--text", text, "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--device", "cpu"]
        analyze_s, analyze_rss = timed([exe, "analyze", model, *common])
        rows = []
        for budget in args.budgets.split(","):
            tag = f"{name}-{budget.replace(':', '-').replace('%', '')}-{args.variant}"
            plan = out / f"{tag}.json"
            cmd = [exe, "search", model, "--budget", budget, *common, "--eval-text", "bundled",
                   "--eval-samples", str(args.eval_samples), "--eval-seq-len", str(args.eval_seq_len),
                   "--out", str(plan), "--plot", str(out / f"{tag}.png"), *VARIANTS[args.variant]]  # fmt: skip
            wall, rss = timed(cmd)
            record = json.loads(plan.read_text())
            rows.append((budget, wall, rss, record["search"]))
    print(f"\n{name}: calibration {args.samples} x {args.seq_len} tokens of the Tiny Shakespeare training split; "
          f"held-out: {args.eval_samples} x {args.eval_seq_len} tokens of the bundled held-out split; "
          f"analyze on the calibration windows: {analyze_s:.0f} s, peak RSS {analyze_rss / 2**20:,.0f} MiB\n")  # fmt: skip
    for budget, wall, rss, s in rows:
        print(f"### {budget} ({s['algorithm']}): search {s['seconds']:.0f} s ({wall:.0f} s with loading and held-out "
              f"scoring), {s['evaluations']} candidates measured in full, {s['forward_equivalents']} "
              f"forward-equivalents, objective {s['objective_value']:.4f}, peak RSS {rss / 2**20:,.0f} MiB "
              f"({rss / analyze_rss:.2f}x analyze)\n")  # fmt: skip
        print("| strategy | removes (source layers) | params removed | prefill FLOPs removed | held-out perplexity |")
        print("|---|---|---:|---:|---:|")
        for r in s["comparison"]:
            plan = r["plan"]
            attn = sorted(set(plan["drop_attention"]) - set(plan["drop_mlp"]))
            mlp = sorted(set(plan["drop_mlp"]) - set(plan["drop_attention"]))
            parts = [f"{k} {v}" for k, v in (("blocks", plan["drop_blocks"]), ("attn", attn), ("MLP", mlp)) if v]
            print(f"| {r['strategy']} | {'; '.join(parts) or '-'} | {r['params_removed']:.1%} | "
                  f"{r['latency_removed']:.1%} | {r['perplexity']:.2f} |")  # fmt: skip
        print()


if __name__ == "__main__":
    main()
