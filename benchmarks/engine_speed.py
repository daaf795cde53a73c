"""Engine speed: llama.cpp (llama-cpp-python) running a model and its pruned exports, against the FLOP ideal.

    python benchmarks/engine_speed.py [MODEL ...] [--repeats 5] [--threads 2] [--outtype f16] [--json PATH]

MODEL: `smollm2` (the real SmolLM2-135M-Instruct, see benchmarks/real_model.py), `demo` (the bundled demo
model; the default is both), or any local folder or Hub id of a Llama-shaped model. Each is exported three
or four ways and every export converted by `skipprune gguf` (llama.cpp's own converter):

- source: the unpruned model (converted as it is);
- attention, last 33 %: the attention of the last third of the layers (the seed paper's recipe), and attention
  33 % (searched): the plan `skipprune search --budget attn:33%` found (benchmarks/search/<model>-attn-33-
  default.json, where it exists), both as `--format nemotron-nas`;
- blocks 33 %: the last third of the blocks (the stock architecture).

Each export is first checked against transformers on real text (`agreement`: tokens, next-token argmax and
logits over 512 tokens of the bundled held-out text, a 32-token greedy continuation). All GGUFs are loaded at once in llama.cpp with the same threads and context and measured taking turns, after
one warm-up round, `--repeats` rounds: prompt processing (tokens/s) of 256- and 1,024-token prompts, and
generation (tokens/s) of 64 tokens after the 1,024-token prompt. Medians; ratios against the source measured
in the same rounds. KV-cache bytes are llama.cpp's own report (its log line `llama_kv_cache: size = ...`).

The FLOP ideal: prefill, skipprune's cost model (`search --budget latency:`) at the prompt length; generation,
per token at a 1,024-token context: 2 x weights of every kept projection, MLP and the head, plus 4 x context x
heads x head_dim for each kept attention (scores and weighted sum).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PROMPTS = (256, 1024)
GENERATED = 64


def resolve(model: str) -> Path:
    from real_model import resolve_model

    return Path(resolve_model(model))


def plans(source: Path, n: int) -> dict[str, dict]:
    third = max(1, round(n / 3))
    searched = Path(__file__).parent / "search" / f"{source.name}-attn-33-default.json"
    rows = {"source": {}, "attention, last 33 %": {"drop_attn": f"last:{third}", "format": "nemotron-nas"}}
    if searched.is_file():
        rows["attention 33 % (searched)"] = {"plan_file": searched, "format": "nemotron-nas"}
    rows["blocks 33 %"] = {"drop_blocks": f"last:{third}"}
    return rows


@contextlib.contextmanager
def captured_stderr():
    """What C code writes to file descriptor 2 (llama.cpp's log), as a list that holds the text afterwards."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def load(gguf: Path, threads: int):
    from llama_cpp import Llama

    with captured_stderr() as log:
        llm = Llama(
            model_path=str(gguf), n_ctx=max(PROMPTS) + GENERATED + 8, n_batch=512, n_threads=threads, verbose=True
        )
    sizes = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", log[0])
    return llm, float(sizes[-1]) * 2**20 if sizes else None


def measure(llm, tokens: list[int]) -> dict[str, float]:
    """tokens/s: prompt processing at each prompt length, then generation after the longest prompt."""
    out = {}
    for t in PROMPTS:
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens[:t])
        out[f"prompt {t}"] = t / (time.perf_counter() - started)
    started = time.perf_counter()
    for tok in tokens[max(PROMPTS) : max(PROMPTS) + GENERATED]:
        llm.eval([tok])  # one token at a time, as generation runs (the token fed is fixed, not sampled)
    out["generation"] = GENERATED / (time.perf_counter() - started)
    return out


@functools.cache
def source_model(source: Path):
    """The source in transformers (fp32), loaded once per model for every export's checks and costs."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()


def agreement(source: Path, folder: Path, plan, text: str, tmp: Path, threads: int) -> dict:
    """llama.cpp against transformers on real text, for one export: the same tokens, the share of positions whose
    next-token argmax agrees and the largest logit difference over 512 tokens (f32 GGUF, f32 KV cache), and
    the same 32-token greedy continuation of a 64-token prompt."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from skipprune.export.gguf import to_gguf
    from skipprune.export.source import read_config
    from skipprune.families import family_of
    from skipprune.prune.bypass import bypassed

    gguf = to_gguf(folder, tmp / f"{folder.name}-f32.gguf", "f32")
    ids = AutoTokenizer.from_pretrained(source)(text)["input_ids"][:512]
    with captured_stderr():
        llm = Llama(
            model_path=str(gguf), n_ctx=600, logits_all=True, n_threads=threads, verbose=False, type_k=0, type_v=0
        )
    try:
        same_tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[:512] == ids
        llm.eval(ids)
        got = torch.tensor(llm.scores[: len(ids)])
        llm.reset()
        stream = llm.generate(ids[:64], temp=0.0, top_k=1)
        engine_greedy = [next(stream) for _ in range(32)]
    finally:
        llm.close()
    ref = source_model(source)
    family = family_of(read_config(source, source.name))
    with torch.no_grad(), bypassed(ref, plan, family):
        want = ref(input_ids=torch.tensor([ids])).logits[0]
        seq = torch.tensor([ids[:64]])
        for _ in range(32):  # no cache: the bypass hooks compute the source with the sublayers skipped
            seq = torch.cat([seq, ref(input_ids=seq).logits[:, -1:].argmax(-1)], dim=1)
    return {
        "tokens": len(ids),
        "same_tokens": same_tokens,
        "argmax_agreement": (got.argmax(-1) == want.argmax(-1)).float().mean().item(),
        "max_abs_logit_diff": (got - want).abs().max().item(),
        "max_abs_logit": want.abs().max().item(),
        "same_greedy_32": engine_greedy == seq[0, 64:].tolist(),
    }


def ideal(source: Path, plan, prompt: int) -> dict[str, float]:
    """Ideal speed-ups of `plan` (a PrunePlan): prefill at each prompt length, generation at `prompt` context."""

    from skipprune.export.source import read_config
    from skipprune.families import family_of
    from skipprune.measure.planning import model_costs
    from skipprune.prune.budget import shares

    config = read_config(source, source.name)
    family = family_of(config)
    model = source_model(source)
    out = {}
    for t in PROMPTS:
        costs = model_costs(model, family, config, t, 1, "default")
        out[f"prompt {t}"] = 1 / (1 - shares(plan, costs)["latency"])
    text = config.get("text_config", config)
    heads, hidden = int(text["num_attention_heads"]), int(text["hidden_size"])
    head_dim = int(text.get("head_dim") or hidden // heads)
    costs = model_costs(model, family, config, 1, 1, "default")
    attention = [2 * p + 4 * prompt * heads * head_dim for p in costs.attention_params]
    mlp = [2 * p for p in costs.mlp_params]
    head = 2 * int(text["vocab_size"]) * hidden
    total = sum(attention) + sum(mlp) + head
    removed = sum(attention[i] for i in plan.drop_attention) + sum(mlp[i] for i in plan.drop_mlp)
    out["generation"] = total / (total - removed)
    return out


def run_model(model: str, repeats: int, threads: int, outtype: str) -> dict:
    import skipprune
    from skipprune.export.gguf import to_gguf
    from skipprune.export.source import read_config
    from skipprune.families.config import layer_count
    from skipprune.records import ExportRecord

    source = resolve(model)
    n = layer_count(read_config(source, source.name))
    text = (Path(skipprune.__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(source)(text * 4)["input_ids"][: max(PROMPTS) + GENERATED]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="skipprune-engine-") as tmp:
        tmp = Path(tmp)
        engines = {}
        for name, options in plans(source, n).items():
            folder = source
            if options:
                folder = tmp / "-".join(
                    name.replace("%", "pct").replace(",", "").replace("(", "").replace(")", "").split()
                )
                result = skipprune.export(source, folder, **options, card=False)
                plan = result.record.plan
            else:
                from skipprune.prune.plan import PrunePlan

                plan = PrunePlan(n)
            gguf = to_gguf(folder, tmp / f"{folder.name}.gguf", outtype)
            llm, kv = load(gguf, threads)
            engines[name] = llm
            rows[name] = {
                "plan": plan.describe(),
                "agreement": agreement(source, folder, plan, text, tmp, threads) if options else None,
                "gguf_bytes": gguf.stat().st_size,
                "kv_cache_bytes": kv,
                "ideal": ideal(source, plan, max(PROMPTS)),
                "record": ExportRecord.load(folder).plan.to_dict() if options else None,
                "runs": [],
            }
        for llm in engines.values():  # warm-up
            measure(llm, tokens)
        for _ in range(repeats):
            for name, llm in engines.items():
                rows[name]["runs"].append(measure(llm, tokens))
        for llm in engines.values():
            llm.close()
    base = rows["source"]
    for row in rows.values():
        row["median"] = {k: statistics.median(r[k] for r in row["runs"]) for k in row["runs"][0]}
        row["speedup"] = {
            k: statistics.median(r[k] / b[k] for r, b in zip(row["runs"], base["runs"])) for k in row["runs"][0]
        }
        row["of_ideal"] = {k: row["speedup"][k] / row["ideal"][k] for k in row["speedup"] if row["ideal"][k] > 1}
    return {"model": source.name, "layers": n, "threads": threads, "outtype": outtype, "rows": rows}


def table(result: dict) -> str:
    lines = [
        f"**{result['model']}** ({result['layers']} layers, {result['outtype']} GGUF, {result['threads']} threads)",
        "",
        "| export | prompt 256 tok/s | prompt 1,024 tok/s | generation tok/s | KV cache | speed-up (prompt 1,024 / "
        "generation) | FLOP ideal | of ideal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        m, s, i = row["median"], row["speedup"], row["ideal"]
        kv = f"{row['kv_cache_bytes'] / 2**20:.1f} MiB" if row["kv_cache_bytes"] else "?"
        of = row["of_ideal"]
        lines.append(
            f"| {name} | {m['prompt 256']:,.0f} | {m['prompt 1024']:,.0f} | {m['generation']:,.1f} | {kv} | "
            f"{s['prompt 1024']:.2f}× / {s['generation']:.2f}× | {i['prompt 1024']:.2f}× / {i['generation']:.2f}× | "
            + (f"{of.get('prompt 1024', 1):.2f} / {of.get('generation', 1):.2f}" if of else "-")
            + " |"
        )
    lines.append("")
    for name, row in result["rows"].items():
        if a := row["agreement"]:
            lines.append(
                f"- {name}: same tokens as transformers {a['same_tokens']}; next-token argmax agrees at "
                f"{a['argmax_agreement']:.2%} of {a['tokens']} positions, max |logit diff| "
                f"{a['max_abs_logit_diff']:.2g} (logits up to {a['max_abs_logit']:.1f}); same 32-token greedy "
                f"continuation: {a['same_greedy_32']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["smollm2", "demo"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--outtype", default="f16")
    parser.add_argument("--json", default=str(Path(__file__).parent / "engine_speed.json"))
    args = parser.parse_args()
    results = [run_model(m, args.repeats, args.threads, args.outtype) for m in args.models]
    for r in results:
        print(table(r) + "\n")
    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
