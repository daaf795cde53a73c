"""Prefill speed-up of attention-, MLP- and block-33 % exports against the FLOP-proportional ideal.

    python benchmarks/prefill_speedup.py [--dir /tmp/skipprune-prefill] [--batch 8] [--repeats 7]

A random Llama of 12 layers, hidden 1024, MLP 2816, 16 heads (fp32) is exported three ways (removing the
attention, the MLP or the whole block of the last 4 layers); all four models are loaded and their time to
predict one token for prompts of 50 and 100 tokens is measured in the same run, taking turns, median of
repeats after a warm-up. The ideal speed-up counts the matmul FLOPs of the decoder (projections, attention
scores and the MLP; the lm_head on the one predicted token is included). KV bytes per token are read from a
real cache and must equal the kept-attention fraction exactly.

Batch 8 by default: at batch 1 a CPU forward of this model is bound by reading its ~600 MB of weights, not
by arithmetic, so speed-ups follow removed bytes and can exceed the FLOP ideal.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import skipprune
from skipprune.measure.speed import interleaved_latency, kv_bytes_per_token

SHAPE = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=32000,
    max_position_embeddings=512,
)
VARIANTS = {
    "attention-33%": {"drop_attn": "last:4"},
    "MLP-33%": {"drop_mlp": "last:4"},
    "blocks-33%": {"drop_blocks": "last:4"},
}
FOLDERS = {"attention-33%": "attn33", "MLP-33%": "mlp33", "blocks-33%": "blocks33"}  # valid module names


def flops(layers_attn: int, layers_mlp: int, length: int) -> float:
    """Matmul FLOPs of one prefill of `length` tokens (batch 1)."""
    d, f, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    attn = 2 * length * 4 * d * d + 2 * 2 * length * length * d  # q, k, v, o projections + scores and values
    mlp = 2 * length * 3 * d * f
    return layers_attn * attn + layers_mlp * mlp + 2 * d * v  # per sequence; the batch cancels in ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/skipprune-prefill"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    src = args.dir / "source"
    if not (src / "config.json").exists():
        LlamaForCausalLM(LlamaConfig(**SHAPE)).save_pretrained(src)
    models = {"original": AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()}
    for name, spec in VARIANTS.items():
        out = args.dir / FOLDERS[name]
        shutil.rmtree(out, ignore_errors=True)
        skipprune.export(src, out, verify_numerics=False, card=False, **spec)
        models[name] = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
    kept = {"original": (12, 12), "attention-33%": (8, 12), "MLP-33%": (12, 8), "blocks-33%": (8, 8)}
    kv = {name: kv_bytes_per_token(m) for name, m in models.items()}
    print(
        f"{SHAPE['num_hidden_layers']} layers, hidden {SHAPE['hidden_size']}, fp32, batch {args.batch}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved repeats"
    )
    print(
        "| variant | prompt | latency (ms) | speed-up | FLOP-ideal speed-up | speed-up / ideal | time saved / ideal saving | KV bytes/token |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for length in (50, 100):
        runs = interleaved_latency(list(models.values()), args.batch, length, args.repeats)
        times = dict(zip(models, map(statistics.median, runs)))
        for name, t in times.items():
            a, m = kept[name]
            speedup = times["original"] / t
            ideal = flops(12, 12, length) / flops(a, m, length)
            saved = (1 - 1 / speedup) / (1 - 1 / ideal) if ideal > 1 else None
            ratio, saving = ("-", "-") if saved is None else (f"{speedup / ideal:.1%}", f"{saved:.0%}")
            print(
                f"| {name} | {length} | {t * 1e3:.1f} | {speedup:.3f} | {ideal:.3f} | {ratio} | {saving} | {kv[name]:,} |"
            )
    assert kv["attention-33%"] * 12 == kv["original"] * 8 and kv["blocks-33%"] * 12 == kv["original"] * 8
    assert kv["MLP-33%"] == kv["original"]
    print("KV bytes per token equal the kept-attention fraction exactly (8/12 for attention and blocks).")


if __name__ == "__main__":
    main()
