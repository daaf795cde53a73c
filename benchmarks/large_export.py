"""A Llama-2-7B-shape export with its logit check, and analyze, on a machine where the model does not fit
twice in memory.

    python benchmarks/large_export.py [--dir /tmp/skipprune-large] [--layers 32] [--drop last:33%] [--keep]
                                      [--analyze [--samples 32 --seq-len 256]]

Writes a random bf16 checkpoint of Llama-2-7B's shape (hidden 4096, MLP 11008, 32 heads, vocab 32000; 13.5 GB
at 32 layers, in 5 GB shards) into a temporary folder, then times `cp -r` of it (plain, and followed by `sync`
of the copied files: a durable copy, as the export's is) and the default `skipprune export SOURCE OUT
--drop-attn SPEC` (source check, structure and bytes, model check, and the logit check, which streams both
models' weights from disk at this size), reporting wall time and peak memory (benchmarks/timing.py), and
deletes everything unless --keep. Run it at 16 and 32 layers to see whether the peak grows with
depth. With --analyze, also `skipprune analyze SOURCE --samples N --seq-len T --device cpu --device-map
stream` (blocks streamed from disk and run one at a time over all windows: what analyze does by itself when
the fp32 model does not fit, as at 32 layers) and, where the fp32 model fits in memory, one plain in-memory
transformers forward over the same windows for comparison (a child process each; the demo model's
tokenizer is copied in for the text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timing import measured, split_of

SHAPE = {"vocab": 32000, "hidden": 4096, "intermediate": 11008, "heads": 32}
SHARD_BYTES = 5 * 10**9


def make_checkpoint(folder: Path, layers: int) -> None:
    """Random-looking bf16 weights, cheaply: one random block tiled over each tensor (finite values only)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    h, i, v = SHAPE["hidden"], SHAPE["intermediate"], SHAPE["vocab"]
    block = (torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)

    def rnd(*shape):
        n = 1
        for d in shape:
            n *= d
        return block.repeat(n // block.numel() + 1)[:n].view(*shape).clone()

    names = ["model.embed_tokens.weight"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        for name, shape in (
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.k_proj.weight", (h, h)),
            ("self_attn.v_proj.weight", (h, h)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (i, h)),
            ("mlp.up_proj.weight", (i, h)),
            ("mlp.down_proj.weight", (h, i)),
            ("input_layernorm.weight", (h,)),
            ("post_attention_layernorm.weight", (h,)),
        ):
            names.append(p + name)
            shapes[p + name] = shape
    names += ["model.norm.weight", "lm_head.weight"]
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    shards, size = [[]], 0
    for name in names:
        nbytes = 2 * int(torch.tensor(shapes[name]).prod())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.ones(shapes[n], dtype=torch.bfloat16) if "norm" in n else rnd(*shapes[n]) for n in shard}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": v,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": layers,
        "num_attention_heads": SHAPE["heads"],
        "num_key_value_heads": SHAPE["heads"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def in_memory_forward(folder: Path, samples: int, seq_len: int) -> None:
    """One plain forward of the fp32 model over the windows analyze reads (run in a child: see main)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skipprune.measure.text import read_text, token_windows

    windows = token_windows(AutoTokenizer.from_pretrained(folder), read_text(None)[0], seq_len, samples)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for w in windows:
            model.model(input_ids=w.view(1, -1))
    print(f"forward {time.perf_counter() - start:.1f}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/skipprune-large"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--drop", default="last:33%")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the export")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of cp, --no-verify, default")
    ap.add_argument("--analyze", action="store_true", help="also time analyze (and an in-memory forward)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    exe = shutil.which("skipprune") or sys.exit("install skipprune first (pip install -e .)")
    src, out, copy = args.dir / "source", args.dir / "out", args.dir / "copy"
    try:
        if not (src / "config.json").exists():
            start = time.perf_counter()
            code = (
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import large_export; "
                f"large_export.make_checkpoint(__import__('pathlib').Path({str(src)!r}), {args.layers})"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
            print(f"wrote the source in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        size = sum(p.stat().st_size for p in src.iterdir())
        cmds = {
            "cp -r": ["cp", "-r", str(src), str(copy)],
            # A durable copy, for comparison with the export, which fsyncs every file and the folder before publishing.
            "cp -r, then sync of its files": ["sh", "-c", f"cp -r '{src}' '{copy}' && sync '{copy}'/* '{copy}'"],
            "skipprune export --no-verify": [
                exe,
                "export",
                str(src),
                str(out),
                "--drop-attn",
                args.drop,
                "--no-verify",
            ],
            "skipprune export (default, logits checked)": [exe, "export", str(src), str(out), "--drop-attn", args.drop],
            # The same with every check in the export's own process, one after the other, for comparison.
            "skipprune export (default, nothing beside the copy)": [
                sys.executable,
                "-c",
                "import importlib, sys; s = importlib.import_module('skipprune.export.sidecar'); s.OVERLAP_BYTES = s.LOGITS_OVERLAP_BYTES = 1 << 62; "
                "from skipprune.cli import main; main(sys.argv[1:])",
                "export",
                str(src),
                str(out),
                "--drop-attn",
                args.drop,
            ],
        }
        runs: dict[str, list] = {name: [] for name in cmds}
        for _ in range(args.repeats):  # interleaved: the machine's speed drifts
            for name, cmd in cmds.items():
                shutil.rmtree(copy, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                runs[name].append(measured(cmd))
        shutil.rmtree(copy, ignore_errors=True)
        record = json.loads((out / "skipprune.json").read_text())
        base = statistics.median(w for w, _, _ in runs["cp -r"])
        print(
            f"source: {size / 1e9:.1f} GB, {args.layers} layers of Llama-2-7B's shape; drop-attn {args.drop}; "
            f"median of {args.repeats}"
        )
        print("| command | wall (s) | vs cp -r | peak memory (MiB) |\n|---|---:|---:|---:|")
        for name, rs in runs.items():
            wall = statistics.median(w for w, _, _ in rs)
            print(f"| {name} | {wall:.1f} | {wall / base:.2f}x | {max(r for _, r, _ in rs) / 2**20:.0f} |")
            print(f"  walls: {', '.join(f'{w:.1f}' for w, _, _ in rs)}")
            splits = [split_of(e) for _, _, e in rs if split_of(e)]
            if splits:
                phases = {k: statistics.median(sp.get(k, 0.0) for sp in splits) for k in splits[0]}
                print("  split (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        print("verification:", json.dumps(record["verification"]["numerics"]))
        if args.analyze:
            shutil.rmtree(out)
            demo = Path(__file__).parent.parent / "skipprune" / "data" / "demo-model"
            for f in demo.glob("tokenizer*"):
                shutil.copy(f, src / f.name)
            size_args = ["--samples", str(args.samples), "--seq-len", str(args.seq_len)]
            wall_a, rss_a, err_a = measured(
                [exe, "analyze", str(src), *size_args, "--device", "cpu", "--device-map", "stream"]
            )
            print(
                f"| skipprune analyze ({args.samples} x {args.seq_len} tokens, streamed) | {wall_a:.1f} | "
                f"{wall_a / base:.2f}x | {rss_a / 2**20:.0f} |"
            )
            print("\n".join(line for line in err_a.splitlines() if "stream" in line or "GiB" in line))
            fp32 = 4 * sum(p.stat().st_size for p in src.glob("*.safetensors")) // 2
            if fp32 < 0.8 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):
                code = (
                    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import large_export; "
                    f"large_export.in_memory_forward(__import__('pathlib').Path({str(src)!r}), "
                    f"{args.samples}, {args.seq_len})"
                )
                wall_f, rss_f, err_f = measured([sys.executable, "-c", code])
                forward = float(err_f.split("forward ")[-1].split()[0])
                print(
                    f"| in-memory fp32 load + one forward over the same windows | {wall_f:.1f} | "
                    f"{wall_f / base:.2f}x | {rss_f / 2**20:.0f} |"
                )
                print(f"of which the forward alone: {forward:.1f} s; analyze / forward = {wall_a / forward:.2f}")
            else:
                print(f"in-memory fp32 forward: not run, the fp32 model ({fp32 / 2**30:.1f} GiB) does not fit")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
