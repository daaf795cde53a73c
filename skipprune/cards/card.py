"""README.md model card of an export, rendered from the folder's own records: skipprune.json (what was
removed, how it was verified) and, when measured, results.json (scores). A number that was not measured
reads "not measured"."""

from __future__ import annotations

import json
from pathlib import Path

from ..prune.plan import PrunePlan, format_indices

CITATIONS = [
    "Tyukin, Dovonon, Kaddour, Minervini. *Attention Is All You Need But You Don't Need All Of It For Inference "
    "of Large Language Models*. 2024. arXiv:2407.15516",
    "Jaiswal, Hu, Yin, Wang, Ding, Wang. *FFN-SkipLLM: A Hidden Gem for Autoregressive Decoding with Adaptive "
    "Feed Forward Skipping*. 2024. arXiv:2404.03865",
]
NOT_MEASURED = "not measured"


def tags_for(plan: PrunePlan) -> list[str]:
    kinds = (
        ("attention-pruning", plan.drop_attention - plan.drop_mlp),
        ("mlp-pruning", plan.drop_mlp - plan.drop_attention),
        ("block-pruning", plan.dropped_blocks),
    )
    return ["skipprune", "pruned", *[tag for tag, layers in kinds if layers]]


def card_data(record: dict, results: dict | None, name: str):
    """YAML metadata: base model, tags, and a model-index of the measured results."""
    from huggingface_hub import EvalResult, ModelCardData

    plan = PrunePlan.from_dict(record["plan"])
    src = record["source"]
    evals = []
    if results and results.get("perplexity") is not None:
        proto = results["perplexity_protocol"]
        hub_text = proto["text"].startswith("WikiText-2")
        evals.append(EvalResult(
            task_type="text-generation", task_name="Perplexity",
            dataset_type="wikitext" if hub_text else _local_type(proto["text"]),
            dataset_config="wikitext-2-raw-v1" if hub_text else None,
            dataset_name=proto["text"] if hub_text else f"{proto['text']} (local text, not a Hub dataset)",
            metric_type="perplexity", metric_name=f"token perplexity ({proto['seq_len']}-token windows)",
            metric_value=round(results["perplexity"], 4),
        ))  # fmt: skip
    for task, r in (results or {}).get("tasks", {}).items():
        evals.append(EvalResult(
            task_type="text-generation", task_name=task, dataset_type=_local_type(task) if r.get("local") else task,
            dataset_name=f"{task} (local task)" if r.get("local") else task, metric_type=r["metric"],
            metric_value=round(r["value"], 4), dataset_args={"num_few_shot": r["num_fewshot"]},
        ))  # fmt: skip
    return ModelCardData(
        base_model=src["id"] if src.get("revision") else None,  # a Hub source only; a local path means nothing there
        tags=tags_for(plan),
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=name,
        eval_results=evals or None,
    )


def _local_type(name: str) -> str:
    """A model-index dataset type for local data: distinct per dataset (the Hub groups results by type) and
    unmistakable for a Hub dataset id (which cannot contain ':')."""
    return "local:" + "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())[:60]


def render_card(record: dict, results: dict | None, name: str) -> str:
    plan = PrunePlan.from_dict(record["plan"])
    src = record["source"]
    stock = record["architecture"] == "stock"
    meta = ["---", card_data(record, results, name).to_yaml(), "---"]

    rows = ["| output layer | source layer | attention | MLP |", "|---:|---:|:---:|:---:|"]
    rows += [
        f"| {lyr.output} | {lyr.source} | {'kept' if lyr.attention else '**removed**'} | {'kept' if lyr.mlp else '**removed**'} |"
        for lyr in plan.layers
    ]
    if plan.dropped_blocks:
        rows.append(f"\nWhole blocks removed (source numbering): {format_indices(plan.dropped_blocks)}.")
    numerics = record["verification"].get("numerics")
    checked = (
        f"logits equal the source model with the same sublayers bypassed (max |difference| "
        f"{numerics['max_abs_logit_diff']:.3g} over {numerics['tokens']} tokens, {numerics['dtype']})"
        if isinstance(numerics, dict)
        else f"logit comparison {numerics}"
    )
    # A Hub source is named with its commit; a local one by folder name only (its path means nothing elsewhere).
    origin = f"`{src['id']}` at revision `{src['revision']}`" if src.get("revision") else f"a local checkpoint (`{Path(src['id']).name}`)"
    trust = "" if stock else ", trust_remote_code=True"
    load_note = (
        "Only whole blocks were removed, so this is the stock architecture: no remote code is needed."
        if stock
        else "The model ships a short modeling file (`modeling_skipprune.py`, torch + transformers only) that runs "
        "the stock decoder with the removed sublayers skipped; load it with `trust_remote_code=True`."
    )
    sections = [
        f"# {name}",
        f"Pruned from {origin} with skipprune {record['skipprune_version']}: {plan.describe()}.",
        "## What was removed\n\n![Which layers keep attention and MLP](layers.png)\n\n"
        "Green: kept; red: removed; grey: whole block removed (one row per source layer, attention | MLP).\n\n"
        + "\n".join(rows),
        "## Scores\n\n" + _scores(results, record),
        _adaptive_section(record.get("adaptive_ffn_skip")),
        "## Verification\n\nStructure: every tensor the model expects is present, none of the removed ones is, "
        f"and every kept tensor is byte-identical to the source.\nNumerics: {checked}.",
        f"## How to load\n\n{load_note}\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{name}"{trust})\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}"{trust})\n```',
        f"## Reproduce\n\n```\n{record.get('command') or 'skipprune export (called from Python)'}\n```",
        "## Citations\n\n" + "\n".join(f"- {c}" for c in CITATIONS),
    ]
    return "\n".join(meta) + "\n\n" + "\n\n".join(sections) + "\n"


def _adaptive_section(settings: dict | None) -> str:
    if not settings:
        return "## Adaptive FFN skipping\n\nOff: every kept FFN runs for every token."
    items = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    return (
        "## Adaptive FFN skipping\n\nOn (FFN-SkipLLM, Jaiswal et al. 2024): during generation, after the warm-up "
        "tokens and outside the cold first/last layers, the FFN of the next `max_skips` layers is skipped once "
        f"cos(h, h + FFN(h)) reaches `sim_threshold`. Settings: {items}. After `generate()`, "
        "`model.ffn_skip_stats` reports the skip ratio of that call."
    )


def _fmt(value, kind: str) -> str:
    if value is None:
        return NOT_MEASURED
    if kind == "bytes":
        unit = next(u for u, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if value >= size or u == "B")
        return f"{value / dict(GiB=2**30, MiB=2**20, KiB=2**10, B=1)[unit]:,.{0 if unit == 'B' else 2}f} {unit}"
    if kind == "acc":
        return f"{value:.4f}"
    if kind == "rate":
        return f"{value:,.1f} tokens/s"
    if kind == "int":
        return f"{value:,}"
    if kind == "ppl":
        return f"{value:.2f}"
    if kind == "s":
        return f"{value * 1000:.2f} ms"
    return str(value)


def _scores(results: dict | None, record: dict) -> str:
    if not results:
        return f"Not measured yet (params: {NOT_MEASURED}; perplexity: {NOT_MEASURED}; speed: {NOT_MEASURED})."
    base = results.get("baseline") or {}
    rows = [("parameters", "params", "int"), ("weights on disk", "disk_bytes", "bytes"),
            ("KV cache per token", "kv_bytes_per_token", "bytes"), ("perplexity", "perplexity", "ppl")]  # fmt: skip
    speed_keys = sorted(set(results.get("speed", {})) | set(base.get("speed", {})))
    lines = ["| | source | pruned | pruned / source |", "|---|---:|---:|---:|"]

    def row(label, before, after, kind):
        ratio = f"{after / before:.3f}" if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before else "-"
        lines.append(f"| {label} | {_fmt(before, kind)} | {_fmt(after, kind)} | {ratio} |")

    for label, key, kind in rows:
        row(label, base.get(key), results.get(key), kind)
    if "peak_generation_memory_bytes" in speed_keys:
        row("peak memory while generating", base.get("speed", {}).get("peak_generation_memory_bytes"),
            results.get("speed", {}).get("peak_generation_memory_bytes"), "bytes")  # fmt: skip
    if "decode_tokens_per_s" in speed_keys:
        row("greedy decode speed (128 tokens)", base.get("speed", {}).get("decode_tokens_per_s"),
            results.get("speed", {}).get("decode_tokens_per_s"), "rate")  # fmt: skip
    for key in speed_keys:
        if key.startswith("one_token_s"):
            row(f"1-token latency ({key.removeprefix('one_token_s_').replace('_', ', ')})", base.get("speed", {}).get(key),
                results.get("speed", {}).get(key), "s")  # fmt: skip
    for task in sorted(set(results.get("tasks", {})) | set(base.get("tasks", {}))):
        a, b = results.get("tasks", {}).get(task), base.get("tasks", {}).get(task)
        info = a or b
        label = f"{task} ({info['metric']}, {info['num_fewshot']}-shot{', local task' if info.get('local') else ''})"
        row(label, b and b["value"], a and a["value"], "acc")
    proto = results.get("perplexity_protocol")
    notes = []
    if proto:
        notes.append(
            f"Perplexity: token-level, {proto['windows']} non-overlapping windows of {proto['seq_len']} tokens "
            f"({proto['predicted_tokens']:,} predicted tokens) of {proto['text']}."
        )
    speed = results.get("speed") or {}
    if speed:
        notes.append(f"Speed: median of repeated runs after a warm-up, both models in the same run, on {speed.get('device')} "
                     f"in {speed.get('dtype')}; time to predict one token for a batch of prompts (Tyukin et al. 2024, §3.3).")  # fmt: skip
    tasks = results.get("tasks") or {}
    limits = {r.get("limit") for r in tasks.values()}
    notes.append(
        f"Benchmarks (lm-evaluation-harness, model in memory): {', '.join(tasks)}"
        + (f"; at most {limits.pop()} examples per task" if limits and None not in limits else "") + "."
        if tasks else f"Benchmarks (lm-eval): {NOT_MEASURED}."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def load_records(folder: Path) -> tuple[dict, dict | None]:
    """(skipprune.json, results.json or None) of an export folder, or a one-line error."""
    from ..errors import SkippruneError

    def read(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SkippruneError(f"{folder / name}: unreadable ({e}); export again or restore the file") from None

    if not (folder / "skipprune.json").is_file():
        raise SkippruneError(f"{folder} has no skipprune.json; point at a folder written by `skipprune export`")
    return read("skipprune.json"), read("results.json") if (folder / "results.json").is_file() else None


def write_card(folder: Path, name: str | None = None) -> Path:
    """(Re)write README.md from skipprune.json and, when present, results.json."""
    folder = Path(folder)
    record, results = load_records(folder)
    from .diagram import write_png

    write_png(PrunePlan.from_dict(record["plan"]), folder / "layers.png")
    path = folder / "README.md"
    path.write_text(render_card(record, results, name or folder.name), encoding="utf-8")
    return path
