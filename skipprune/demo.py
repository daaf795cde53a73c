"""`skipprune demo`: the whole job on the bundled demo model (a small Llama trained on Tiny Shakespeare):
export, verify, measure both models in one run, write the card, load the export back, generate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .cards.card import write_card
from .data import DEMO_MODEL
from .export.pipeline import export
from .measure.evaluate import evaluate, table
from .records import RESULTS_FILE

log = logging.getLogger(__name__)

DEFAULT_PLAN = {"drop_attn": "last:25%"}  # Tyukin et al.'s best trade-off: attention of the last layers
PROMPT = "ROMEO:\n"


def run_demo(output: Path, overwrite: bool = False, seq_len: int = 256) -> str:
    """Run the demo into `output`; returns the summary to show."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(output).absolute()
    if output.exists() and not overwrite:
        overwrite = _is_previous_demo(output)  # re-running the demo replaces its own earlier output only
    result = export(DEMO_MODEL, output, overwrite=overwrite, command=f"skipprune demo {output.name}", **DEFAULT_PLAN)
    log.info("measuring perplexity, KV cache, 1-token latency and decode speed of both models (interleaved) ...")
    torch.manual_seed(0)
    results = evaluate(str(output), baseline=str(DEMO_MODEL), text="bundled", seq_len=seq_len, device="cpu")
    results.baseline.model = "skipprune demo model (bundled)"
    results.save(output / RESULTS_FILE)
    write_card(output, result.record, results)

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    source = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    pruned = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32, trust_remote_code=True)
    numerics = result.record.verification.numerics
    return "\n".join(
        [
            "",
            f"plan: {result.record.plan.describe()}",
            table(results),
            f"verification: max |logit diff| {numerics.max_abs_logit_diff:.3g} vs the bypassed source "
            f"over {numerics.tokens} tokens ({numerics.dtype})",
            f'source says: "{generate_line(source, tokenizer)}"',
            f'pruned says: "{generate_line(pruned, tokenizer)}"',
            f"output: {output} (README.md card, results.json, skipprune.json)",
        ]
    )


def generate_line(model, tokenizer, prompt: str = PROMPT, tokens: int = 40) -> str:
    import torch

    torch.manual_seed(0)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=tokens, do_sample=True, top_k=40, temperature=0.8, pad_token_id=tokenizer.eos_token_id
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return " / ".join(line for line in text.splitlines() if line.strip())[:160]


def _is_previous_demo(folder: Path) -> bool:
    try:
        record = json.loads((folder / "skipprune.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and str(record.get("command", "")).startswith("skipprune demo")
