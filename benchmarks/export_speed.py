"""Export speed and memory against `cp -r` of the same checkpoint, measured side by side.

    python benchmarks/export_speed.py [--dir /tmp/skipprune-bench] [--repeats 5] [--layers 22] [--verify]

Builds a random bf16 checkpoint of TinyLlama-1.1B's shape (about 2 GiB, two shards) once, then alternates
`cp -r SOURCE` (plain, and followed by `sync` of the copied files: a durable copy) and `skipprune export SOURCE
OUT --drop-blocks last:7 --no-verify` (the source check, structure, kept bytes and the meta-device model check
still run, and the output is fsynced; the logit check, which loads both models, is what --no-verify turns off)
and the import of torch + transformers, which the export's model checks need, and reports
medians, the ratio to cp, each command's peak memory (its process tree's, summed: benchmarks/timing.py)
and the export's own time split. Page cache is warm for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from timing import measured, split_of

SHAPE = dict(vocab=32000, hidden=2048, intermediate=5632, heads=32, kv_heads=4)


def make_checkpoint(folder: Path, layers: int) -> None:
    """Run in a child process (see main) so the measuring process never holds the tensors: wait4's peak RSS
    of a child would otherwise include the parent's memory it was forked from."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    h, i, kv = SHAPE["hidden"], SHAPE["intermediate"], SHAPE["hidden"] // SHAPE["heads"] * SHAPE["kv_heads"]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    shards: list[dict] = [{}, {}]
    shards[0]["model.embed_tokens.weight"] = rnd(SHAPE["vocab"], h)
    for n in range(layers):
        p = f"model.layers.{n}."
        shard = shards[0 if n < layers // 2 else 1]
        shard.update(
            {
                p + "self_attn.q_proj.weight": rnd(h, h),
                p + "self_attn.k_proj.weight": rnd(kv, h),
                p + "self_attn.v_proj.weight": rnd(kv, h),
                p + "self_attn.o_proj.weight": rnd(h, h),
                p + "mlp.gate_proj.weight": rnd(i, h),
                p + "mlp.up_proj.weight": rnd(i, h),
                p + "mlp.down_proj.weight": rnd(h, i),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            }
        )
    shards[1]["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    shards[1]["lm_head.weight"] = rnd(SHAPE["vocab"], h)
    names = [f"model-0000{k + 1}-of-00002.safetensors" for k in range(2)]
    weight_map = {}
    for name, tensors in zip(names, shards):
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({t: name for t in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        vocab_size=SHAPE["vocab"],
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=layers,
        num_attention_heads=SHAPE["heads"],
        num_key_value_heads=SHAPE["kv_heads"],
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        dtype="bfloat16",
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/skipprune-bench"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--drop", default="last:7")
    ap.add_argument("--fresh", action="store_true", help="regenerate the source checkpoint")
    ap.add_argument("--verify", action="store_true", help="also time exports with the logit check (both modes)")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.dir / "source", ignore_errors=True)

    src = args.dir / "source"
    if not (src / "config.json").exists():
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import export_speed; "
            f"export_speed.make_checkpoint(__import__('pathlib').Path({str(src)!r}), {args.layers})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    size = sum(p.stat().st_size for p in src.iterdir())
    exe = shutil.which("skipprune") or sys.exit("install skipprune first (pip install -e .)")
    cmds = {
        "cp -r": lambda out: ["cp", "-r", str(src), str(out)],
        # A durable copy, for comparison with the export, which fsyncs every file and the folder before publishing.
        "cp -r, then sync of its files": lambda out: ["sh", "-c", f"cp -r '{src}' '{out}' && sync '{out}'/* '{out}'"],
        "skipprune export": lambda out: [exe, "export", str(src), str(out), "--drop-blocks", args.drop, "--no-verify"],
        "python -c 'import torch, transformers'": lambda out: [sys.executable, "-c", "import torch, transformers"],
    }
    if args.verify:
        drop = ["--drop-blocks", args.drop]
        cmds["skipprune export (logits checked: default)"] = lambda out: [exe, "export", str(src), str(out), *drop]
        # The default streams this checkpoint's weights from disk; force the in-memory fp32 path for comparison.
        in_memory = (
            "import importlib, sys; importlib.import_module('skipprune.export.verify').fits_in_memory = "
            "lambda *a: True; from skipprune.cli import main; main(sys.argv[1:])"
        )
        cmds["skipprune export (logits checked in memory, forced)"] = lambda out: [
            sys.executable,
            "-c",
            in_memory,
            "export",
            str(src),
            str(out),
            *drop,
        ]
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in cmds}
    splits: dict[str, list[dict]] = {name: [] for name in cmds}
    for _ in range(args.repeats + 1):  # the first round warms the page cache and is discarded
        for name, cmd in cmds.items():
            out = args.dir / "out"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # no write-back of an earlier run's files lands inside the next run's timing
            wall, rss, err = measured(cmd(out))
            runs[name].append((wall, rss))
            splits[name].append(split_of(err))
    shutil.rmtree(args.dir / "out", ignore_errors=True)

    base = statistics.median(w for w, _ in runs["cp -r"][1:])
    print(
        f"source: {size / 2**30:.2f} GiB, {args.layers} layers, drop-blocks {args.drop}; {os.cpu_count()} CPUs; "
        f"median of {args.repeats} interleaved runs"
    )
    print("| command | median wall (s) | vs cp -r | peak RSS (MiB) |\n|---|---:|---:|---:|")
    for name, rs in runs.items():
        rs = rs[1:]
        wall = statistics.median(w for w, _ in rs)
        print(f"| {name} | {wall:.2f} | {wall / base:.2f}x | {max(r for _, r in rs) / 2**20:.0f} |")
    print_splits(splits)


def print_splits(splits: dict[str, list[dict]]) -> None:
    """The exports' own time split, median per phase over the measured rounds."""
    for name, rounds in splits.items():
        rounds = [r for r in rounds[1:] if r]
        if rounds:
            phases = {p: statistics.median(r.get(p, 0.0) for r in rounds) for p in rounds[0]}
            print(f"{name}: " + ", ".join(f"{p} {s:.1f} s" for p, s in phases.items()))


if __name__ == "__main__":
    main()
