"""Input-adaptive FFN skipping on the bundled demo model: skip ratio vs perplexity and decode speed.

    python benchmarks/adaptive_ffn.py [--windows 12] [--window 160] [--prompt 16]

Teacher-forced perplexity with cached decoding: each held-out window's first `--prompt` tokens are a prompt
(computed in full), then every following token is fed one at a time and its prediction scored, so skipping
acts exactly as during generation. Compared, as in FFN-SkipLLM: adaptive skipping with the cold regions that
`skipprune analyze` finds on this model (first 2, last 2 layers), the same without cold regions, and random
FFN skipping at the same ratio in the same layers. Decode speed: greedy 128-token generation, adaptive and
full taking turns, median of 5.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import skipprune
from skipprune.data import DEMO_MODEL as MODEL
from skipprune.data import HELDOUT
from skipprune.measure.speed import DECODE_TOKENS, interleaved_decode

NEVER = {"cold_start": 0, "cold_end": 0, "sim_threshold": 2.0, "warmup_tokens": 5, "max_skips": 1}


@torch.no_grad()
def teacher_forced(model, windows, prompt: int) -> tuple[float, float]:
    """(perplexity over the decoded tokens, skip ratio)."""
    nll, count, skipped, eligible = 0.0, 0, 0, 0
    state = getattr(model, "ffn_skip", None)
    for w in windows:
        if state is not None:
            state.skipped = state.eligible = 0
        out = model(input_ids=w[:, :prompt], use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        for t in range(prompt, w.shape[1]):
            nll -= torch.log_softmax(logits.float(), -1)[0, w[0, t]].item()
            count += 1
            out = model(input_ids=w[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
        if state is not None:
            skipped, eligible = skipped + state.skipped, eligible + state.eligible
    return math.exp(nll / count), skipped / max(1, eligible)


def random_skipping(model, layers: list[int], ratio: float, warmup: int, seed: int = 0) -> None:
    """Skip each listed layer's FFN with probability `ratio` at every decode step after `warmup` (baseline)."""
    gen = torch.Generator().manual_seed(seed)
    step = {"n": 0}

    def count(module, args, kwargs):
        x = kwargs.get("input_ids")
        step["n"] = 0 if x.shape[1] > 1 else step["n"] + 1

    model.model.register_forward_pre_hook(count, with_kwargs=True)
    for i in layers:
        mlp = model.model.layers[i].mlp
        compute = mlp.forward

        def forward(x, compute=compute):
            if step["n"] > warmup and torch.rand((), generator=gen).item() < ratio:
                return torch.zeros_like(x)
            return compute(x)

        mlp.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--window", type=int, default=160)
    ap.add_argument("--prompt", type=int, default=16)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "adaptive"
    skipprune.export(MODEL, out, adaptive_ffn=NEVER, verify_numerics=False)
    tok = AutoTokenizer.from_pretrained(MODEL)
    ids = torch.tensor(tok(HELDOUT.read_text(encoding="utf-8"))["input_ids"])
    windows = [ids[i * args.window : (i + 1) * args.window].unsqueeze(0) for i in range(args.windows)]

    def load(**settings):
        return AutoModelForCausalLM.from_pretrained(
            out, trust_remote_code=True, dtype=torch.float32, adaptive_ffn_skip={**NEVER, **settings}
        ).eval()

    full = load()
    base_ppl, _ = teacher_forced(full, windows, args.prompt)
    print(
        f"demo model, {args.windows} held-out windows of {args.window} tokens ({args.prompt}-token prompts), "
        f"warm-up 5 tokens, max_skips 2; full model: perplexity {base_ppl:.2f}"
    )
    print(
        "| sim_threshold | cold regions | skip ratio | perplexity | random skip, same ratio | decode tok/s (vs full) |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for threshold in (0.995, 0.99, 0.98):
        for cold in ((2, 2), (0, 0)):
            model = load(cold_start=cold[0], cold_end=cold[1], sim_threshold=threshold, max_skips=2)
            ppl, ratio = teacher_forced(model, windows, args.prompt)
            rnd = load()
            random_skipping(rnd, list(range(cold[0], 12 - cold[1])), ratio, warmup=5)
            rnd_ppl, _ = teacher_forced(rnd, windows, args.prompt)
            speed = ""
            if cold == (2, 2):
                fast, slow = (
                    DECODE_TOKENS / statistics.median(t) for t in interleaved_decode([model, full], repeats=5)
                )
                speed = f"{fast:.1f} ({fast / slow:.2f}x)"
            print(
                f"| {threshold} | {'first/last 2' if cold[0] else 'none'} | {ratio:.1%} | {ppl:.2f} | {rnd_ppl:.2f} | {speed} |"
            )


if __name__ == "__main__":
    main()
