"""The bundled demo: a small Llama trained on Tiny Shakespeare (scripts/train_demo.py), and `skipprune demo`,
which runs the whole job on it: export, measure, card, load back, generate."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
MODEL = HERE / "model"
HELDOUT = HERE / "heldout.txt"
DEFAULT_PLAN = {"drop_attn": "last:25%"}  # Tyukin et al.'s best trade-off: attention of the last layers
PROMPT = "ROMEO:\n"


def generate_line(model, tokenizer, prompt: str = PROMPT, tokens: int = 40) -> str:
    import torch

    torch.manual_seed(0)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=tokens, do_sample=True, top_k=40, temperature=0.8,
                         pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return " / ".join(line for line in text.splitlines() if line.strip())[:160]


def heldout_ids(tokenizer):
    import torch

    return torch.tensor(tokenizer(HELDOUT.read_text(encoding="utf-8"))["input_ids"])


def run_demo(output: Path, overwrite: bool = False, seq_len: int = 256, log=print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..cards.card import load_records, write_card
    from ..cards.scores import measure, results, speed
    from ..export.pipeline import export

    output = Path(output).absolute()
    if output.exists() and not overwrite:
        overwrite = _is_previous_demo(output)  # re-running the demo replaces its own earlier output only
    result = export(MODEL, output, overwrite=overwrite, log=log, command=f"skipprune demo {output.name}", **DEFAULT_PLAN)

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    ids = heldout_ids(tokenizer)
    source = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    pruned = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32, trust_remote_code=True)
    name = "the bundled Tiny Shakespeare held-out split (never trained on)"
    log("measuring perplexity, KV cache, 1-token latency and decode speed of both models (interleaved) ...")
    torch.manual_seed(0)
    before = measure(source, MODEL, ids, seq_len, name)
    after = measure(pruned, output, ids, seq_len, name)
    before["speed"], after["speed"] = speed([source, pruned])
    report = results(output.name, after, before, "skipprune demo model (bundled)")
    (output / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_card(output)
    record, _ = load_records(output)
    samples = {"source": generate_line(source, tokenizer), "pruned": generate_line(pruned, tokenizer)}
    _summary(result, before, after, samples, record, log)
    return report


def _is_previous_demo(folder: Path) -> bool:
    try:
        record = json.loads((folder / "skipprune.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(record.get("command", "")).startswith("skipprune demo")


def _summary(result, before: dict, after: dict, samples: dict, record: dict, log) -> None:
    def ratio(key):
        return after["speed"][key] / before["speed"][key]

    log("")
    log(f"plan: {result.plan.describe()}")
    log(f"{'':24}{'source':>12}{'pruned':>12}")
    log(f"{'parameters':24}{before['params']:>12,}{after['params']:>12,}")
    log(f"{'KV cache bytes/token':24}{before['kv_bytes_per_token']:>12,}{after['kv_bytes_per_token']:>12,}")
    log(f"{'held-out perplexity':24}{before['perplexity']:>12.2f}{after['perplexity']:>12.2f}")
    for key in sorted(k for k in after["speed"] if k.startswith("one_token")):
        label = "1-token latency " + key.split("_")[-1]
        log(f"{label:24}{before['speed'][key] * 1e3:>10.2f}ms{after['speed'][key] * 1e3:>10.2f}ms  ({ratio(key):.2f}x)")
    key = "decode_tokens_per_s"
    log(f"{'decode tokens/s':24}{before['speed'][key]:>12.1f}{after['speed'][key]:>12.1f}  ({ratio(key):.2f}x)")
    log(f"verification: {json.dumps(record['verification']['numerics'])}")
    log(f'source says: "{samples["source"]}"')
    log(f'pruned says: "{samples["pruned"]}"')
    log(f"output: {result.output} (README.md card, results.json, skipprune.json)")
