"""The README.md model card of an export: one template, filled from the export's records.

Everything in it comes from `ExportRecord` (what was removed, how it was verified) and, when measured,
`Results` (scores); a number that was not measured reads "not measured". A card never names a path of the
user's machine: a Hub source is named `id@revision`, a local one by its folder name, the model by its output
name or repo id.
"""

from __future__ import annotations

from pathlib import Path

from .. import formats
from ..prune.plan import PrunePlan, format_indices, layers_phrase
from ..records import ExportRecord, Measurement, PlanSearch, Results
from ..system import write_text_durably

CITATIONS = [
    "Tyukin, Dovonon, Kaddour, Minervini. *Attention Is All You Need But You Don't Need All Of It For Inference "
    "of Large Language Models*. 2024. arXiv:2407.15516",
    "Jaiswal, Hu, Yin, Wang, Ding, Wang. *FFN-SkipLLM: A Hidden Gem for Autoregressive Decoding with Adaptive "
    "Feed Forward Skipping*. 2024. arXiv:2404.03865",
]
NOT_MEASURED = "not measured"
LAYERS_PNG = "layers.png"
IMPORTANCE_PNG = "importance.png"  # `skipprune analyze SOURCE --plot OUTPUT/importance.png` puts it there
SEARCH_PNG = "search.png"  # the objective along the search, drawn from the record when the plan was searched

TEMPLATE = """\
---
{metadata}
---

# {name}

Pruned from {origin} with skipprune {version}: {description}.

## What was removed

![Attention and MLP of each source layer: kept, removed, or whole block removed]({layers_png})

{layer_table}
{importance}{search}
## Scores

{scores}

## Adaptive FFN skipping

{adaptive}
{healing}
## Verification

{verification}

## How to load

{load_note}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}"{trust})
tokenizer = AutoTokenizer.from_pretrained("{name}"{trust})
```

## Reproduce

```
{command}
```
{source_note}
## Citations

{citations}
"""


def render_card(record: ExportRecord, results: Results | None, name: str, importance_png: bool = False) -> str:
    plan, src = record.plan, record.source
    trust = "" if record.stock else ", trust_remote_code=True"
    return TEMPLATE.format(
        metadata=card_data(record, results, name).to_yaml(),
        name=name,
        origin=f"`{src.id}` at revision `{src.revision}`" if src.on_hub else f"a local checkpoint (`{src.label}`)",
        version=record.skipprune_version,
        description=plan.describe("token mixer" if record.mixers else "attention"),
        layers_png=LAYERS_PNG,
        layer_table=_layer_table(plan, record.mixers),
        importance=_importance(importance_png),
        search=_search(record.search),
        scores=_scores(results, healed=record.healing is not None),
        adaptive=_adaptive(record.adaptive_ffn_skip),
        healing=_healing(record),
        verification=_verification(record),
        load_note=_load_note(record, name),
        trust=trust,
        command="\n".join(
            [record.command or "skipprune export (called from Python)"]
            + ([record.healing.command] if record.healing and record.healing.command else [])
        ),
        source_note="" if src.on_hub else f"\n`{src.label}` is the local folder the model was pruned from.\n",
        citations="\n".join(f"- {c}" for c in CITATIONS),
    )


def tags_for(plan: PrunePlan) -> list[str]:
    kinds = (
        ("attention-pruning", plan.drop_attention - plan.drop_mlp),
        ("mlp-pruning", plan.drop_mlp - plan.drop_attention),
        ("block-pruning", plan.dropped_blocks),
    )
    return ["skipprune", "pruned", *[tag for tag, layers in kinds if layers]]


def card_data(record: ExportRecord, results: Results | None, name: str):
    """YAML metadata: base model (a Hub source only), tags, and a model-index of the measured results."""
    from huggingface_hub import EvalResult, ModelCardData

    evals = []
    proto = results.perplexity_protocol if results else None
    if results and results.perplexity is not None and proto:
        hub_text = proto.text.startswith("WikiText-2")
        evals.append(
            EvalResult(
                task_type="text-generation",
                task_name="Perplexity",
                dataset_type="wikitext" if hub_text else local_dataset_type(proto.text),
                dataset_config="wikitext-2-raw-v1" if hub_text else None,
                dataset_name=proto.text if hub_text else f"{proto.text} (local text, not a Hub dataset)",
                metric_type="perplexity",
                metric_name=f"token perplexity ({proto.seq_len}-token windows)",
                metric_value=round(results.perplexity, 4),
            )
        )
    for task, r in (results.tasks if results else {}).items():
        evals.append(
            EvalResult(
                task_type="text-generation",
                task_name=task,
                dataset_type=local_dataset_type(task) if r.local else task,
                dataset_name=f"{task} (local task)" if r.local else task,
                metric_type=r.metric,
                metric_value=round(r.value, 4),
                dataset_args={"num_few_shot": r.num_fewshot},
            )
        )
    return ModelCardData(
        base_model=record.source.id if record.source.on_hub else None,
        tags=tags_for(record.plan),
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=name,
        eval_results=evals or None,
    )


def local_dataset_type(name: str) -> str:
    """A model-index dataset type for local data: distinct per dataset (the Hub groups results by type) and
    unmistakable for a Hub dataset id (which cannot contain ':')."""
    return "local:" + "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())[:60]


def _layer_table(plan: PrunePlan, mixers: list[str] = ()) -> str:
    """One row per kept layer; in a hybrid family (`mixers`: each source layer's token mixer) the first column
    names the mixer."""

    def cell(kept: bool, what: str = "") -> str:
        return ("kept" if kept else "**removed**") + (f" ({what})" if what else "")

    first = "token mixer" if mixers else "attention"
    rows = [f"| output layer | source layer | {first} | MLP |", "|---:|---:|:---:|:---:|"]
    rows += [
        f"| {lyr.output} | {lyr.source} | {cell(lyr.attention, mixers[lyr.source] if mixers else '')} | "
        f"{cell(lyr.mlp)} |"
        for lyr in plan.layers
    ]
    if plan.dropped_blocks:
        rows.append(f"\nWhole blocks removed (source numbering): {format_indices(plan.dropped_blocks)}.")
    return "\n".join(rows)


def _importance(present: bool) -> str:
    if not present:
        return ""
    return (
        f"\n![How much each layer changes the residual stream, measured by skipprune analyze]({IMPORTANCE_PNG})\n\n"
        "Per-layer importance of the source on calibration text (`skipprune analyze`).\n"
    )


def _load_note(record: ExportRecord, name: str) -> str:
    return formats.of_export(record.architecture).card_note(record, name)


def _verification(record: ExportRecord) -> str:
    v = record.verification
    converted = v.structure.converted_to
    kept = f"equals the source's converted to {converted}" if converted else "is byte-identical to the source"
    if record.healing:  # what is true after training
        kept = (
            f"that healing did not train is byte-identical to the pruned export ({record.healing.tensors_trained} "
            "were trained)"
        )
    model = (
        ", the model built from `config.json` expects exactly these tensors" if v.structure.model_expects_them else ""
    )
    if v.numerics:
        n = v.numerics
        numerics = (
            f"logits equal the source model with the same sublayers bypassed (max |difference| "
            f"{n.max_abs_logit_diff:.3g} over {n.tokens} tokens, {n.dtype}, {n.mode})"
        )
    else:
        numerics = f"logits not compared ({v.numerics_skipped or 'skipped'})"
    return (
        f"Structure: every tensor of the plan is present, none of the removed ones is{model}, and every kept "
        f"tensor {kept} ({v.structure.tensors} tensors).\nNumerics: {numerics}."
    )


def _adaptive(settings: dict | None) -> str:
    if not settings:
        return "Off: every kept FFN runs for every token."
    items = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    return (
        "On (FFN-SkipLLM, Jaiswal et al. 2024): during generation, after the warm-up tokens and outside the cold "
        "first/last layers, the FFN of the next `max_skips` layers is skipped once cos(h, h + FFN(h)) reaches "
        f"`sim_threshold`. Settings: {items}. After `generate()`, `model.ffn_skip_stats` reports the skip ratio "
        "of that call."
    )


def _search(search: PlanSearch | None) -> str:
    if search is None:
        return ""
    keep = f", {layers_phrase(search.keep)} never touched" if search.keep else ""
    fmt_note = formats.of_option(search.format).search_note
    objective = (
        "KL divergence from the source's next-token distribution"
        if search.objective == "kl"
        else "next-token loss (log perplexity)"
    )
    text = (
        f"\n## How the plan was chosen\n\nMeasured, not guessed: `skipprune search` ({search.algorithm}) removed "
        f"one candidate at a time ({', '.join(search.kinds)}{keep}{fmt_note}), each time the one that raised the "
        f"{objective} least, on {search.windows} windows of {search.seq_len} tokens of {search.text}, until the budget "
        f"{', '.join(search.budgets)} was met; {len(search.steps)} steps, {search.evaluations} candidates measured "
        f"({search.forward_equivalents:g} forward-equivalents, {search.seconds:.0f} s). Final objective: "
        f"{search.objective_value:.4f} nats per token.\n\n"
        f"![The objective after each step of the search]({SEARCH_PNG})\n"
    )
    if search.comparison:
        text += (
            f"\nHeld-out perplexity at the same budget, on text the search never saw: {search.eval_text}, "
            f"{search.eval_windows} windows of {search.eval_seq_len} tokens.\n\n{search_table(search)}\n"
        )
    return text


def search_table(search: PlanSearch) -> str:
    """The held-out comparison of a search, as Markdown: the found plan against one-shot strategies."""
    windows = f" ({search.eval_seq_len}-token windows)" if search.eval_seq_len else ""
    lines = [
        "| strategy | removes (source layers) | params removed | prefill FLOPs removed | held-out perplexity"
        f"{windows} |",
        "|---|---|---:|---:|---:|",
    ]
    for r in search.comparison:
        what = r.plan.describe().removeprefix("remove ").split(" (source numbering")[0]
        lines.append(
            f"| {r.strategy} | {what} | {r.params_removed:.1%} | {r.latency_removed:.1%} | {r.perplexity:.2f} |"
        )
    return "\n".join(lines)


# -- the scores table ----------------------------------------------------------------------------------------


def fmt(value, kind: str) -> str:
    if value is None:
        return NOT_MEASURED
    if kind == "bytes":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{value / size:,.2f} {unit}"
        return f"{value:,} B"
    formats = {"acc": "{:.4f}", "rate": "{:,.1f} tokens/s", "int": "{:,}", "ppl": "{:.2f}"}
    if kind == "s":
        return f"{value * 1000:.2f} ms"
    return formats[kind].format(value) if kind in formats else str(value)


def perplexity_label(proto) -> str:
    """'perplexity (256-token windows)': the window length changes the number, so it goes with it."""
    return f"perplexity ({proto.seq_len}-token windows)" if proto else "perplexity"


def score_rows(results: Results) -> list[tuple[str, float | None, float | None, str, float | None]]:
    """(label, baseline value, model value, kind, noise) for every number measured on either model; noise: the
    larger relative spread of two timings' repeats, where they were timed (a smaller difference is noise)."""
    base = results.baseline or Measurement(model="")
    rows = [
        ("parameters", base.params, results.params, "int", None),
        ("weights on disk", base.disk_bytes, results.disk_bytes, "bytes", None),
        ("KV cache per token", base.kv_bytes_per_token, results.kv_bytes_per_token, "bytes", None),
        (perplexity_label(results.perplexity_protocol), base.perplexity, results.perplexity, "ppl", None),
    ]
    a, b = results.speed, base.speed
    if a or b:

        def get(speed, attr):
            return getattr(speed, attr) if speed else None

        if get(a, "peak_generation_memory_bytes") is not None or get(b, "peak_generation_memory_bytes") is not None:
            rows.append(
                (
                    "peak memory while generating",
                    get(b, "peak_generation_memory_bytes"),
                    get(a, "peak_generation_memory_bytes"),
                    "bytes",
                    None,
                )
            )
        tokens = (a or b).decode_tokens
        rows.append(
            (
                f"greedy decode speed ({tokens} tokens)",
                get(b, "decode_tokens_per_s"),
                get(a, "decode_tokens_per_s"),
                "rate",
                _noise(get(a, "decode_spread"), get(b, "decode_spread")),
            )
        )
        points = sorted({(p.batch, p.prompt_tokens) for s in (a, b) if s for p in s.latency})
        for batch, length in points:
            rows.append(
                (
                    f"1-token latency (batch {batch}, {length}-token prompts)",
                    _latency(b, batch, length, "seconds"),
                    _latency(a, batch, length, "seconds"),
                    "s",
                    _noise(_latency(a, batch, length, "spread"), _latency(b, batch, length, "spread")),
                )
            )
    for task in sorted(set(results.tasks) | set(base.tasks)):
        info = results.tasks.get(task) or base.tasks[task]
        local = ", local task" if info.local else ""
        label = f"{task} ({info.metric}, {info.num_fewshot}-shot{local})"
        rows.append((label, _task(base, task), _task(results, task), "acc", None))
    return rows


def _noise(*spreads: float | None) -> float | None:
    known = [s for s in spreads if s is not None]
    return max(known) if known else None


def _latency(speed, batch: int, length: int, attr: str) -> float | None:
    point = next((p for p in speed.latency if (p.batch, p.prompt_tokens) == (batch, length)), None) if speed else None
    return getattr(point, attr) if point else None


def _task(m: Measurement, task: str) -> float | None:
    return m.tasks[task].value if task in m.tasks else None


NOISY = "≈"  # marks a ratio of timings that differs from 1 by less than their repeats spread
NOISE_NOTE = (
    f"{NOISY} within noise: the two models differ by less than the repeats spread (interquartile range over "
    "median), so that ratio is noise, not an effect; measure again on a quiet machine."
)


def _numbers(before, after) -> bool:
    return isinstance(before, (int, float)) and isinstance(after, (int, float)) and bool(before)


def noisy(before, after, noise: float | None) -> bool:
    """Whether two timings differ by less than `noise`, the relative spread of their repeats."""
    return noise is not None and _numbers(before, after) and abs(after / before - 1) < noise


def ratio(before, after, noise: float | None = None) -> str:
    if _numbers(before, after):
        return f"{after / before:.3f}{NOISY if noisy(before, after, noise) else ''}"
    return "-"


def _scores(results: Results | None, healed: bool = False) -> str:
    if not results and healed:
        return (
            "Held-out perplexity before and after healing: see Healing below. Parameters, KV cache and speed: "
            f"{NOT_MEASURED} yet (`skipprune eval` adds them)."
        )
    if not results:
        return f"Not measured yet (params: {NOT_MEASURED}; perplexity: {NOT_MEASURED}; speed: {NOT_MEASURED})."
    lines = ["| | source | pruned | pruned / source |", "|---|---:|---:|---:|"]
    rows = score_rows(results)
    for label, before, after, kind, noise in rows:
        lines.append(f"| {label} | {fmt(before, kind)} | {fmt(after, kind)} | {ratio(before, after, noise)} |")
    notes = []
    if proto := results.perplexity_protocol:
        notes.append(
            f"Perplexity: token-level, {proto.windows} non-overlapping windows of {proto.seq_len} tokens "
            f"({proto.predicted_tokens:,} predicted tokens) of {proto.text}"
            + (", run block by block with the weights on disk" if proto.schedule == "block by block" else "")
            + "."
        )
    if speed := results.speed:
        notes.append(
            f"Speed: median of repeated runs after a warm-up, both models in the same run, on {speed.device}"
            + (f" with {speed.threads} CPU thread{'s' * (speed.threads > 1)}" if speed.threads else "")
            + f" in {speed.dtype}; time to predict one token for a batch of prompts (Tyukin et al. 2024, §3.3)."
            + (f" {NOISE_NOTE}" if any(noisy(b, a, n) for _, b, a, _, n in rows) else "")
        )
    if results.tasks:
        limits = {r.limit for r in results.tasks.values()}
        limit = f"; at most {limits.pop()} examples per task" if len(limits) == 1 and None not in limits else ""
        notes.append(f"Benchmarks (lm-evaluation-harness, model in memory): {', '.join(results.tasks)}{limit}.")
    else:
        notes.append(f"Benchmarks (lm-eval): {NOT_MEASURED}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


# -- writing -------------------------------------------------------------------------------------------------


def write_card(
    folder: Path,
    record: ExportRecord,
    results: Results | None,
    name: str | None = None,
    drawn: bool = False,
    flush: bool = True,
) -> Path:
    """(Re)write README.md and layers.png of an export folder from its records (already loaded and checked);
    `drawn`: the figures are there already (drawn by `draw_figures` in another process); `flush=False` in a
    staging folder (see write_text_durably)."""
    folder = Path(folder)
    name = name or folder.name
    if not drawn:
        draw_figures(folder, record.plan, record.search, name)
    path = folder / "README.md"
    write_text_durably(path, render_card(record, results, name, (folder / IMPORTANCE_PNG).is_file()), flush)
    return path


def draw_figures(folder: Path, plan: PrunePlan, search: PlanSearch | None, name: str) -> None:
    """The card's figures that the export's records decide: layers.png, and search.png for a searched plan."""
    from .diagram import write_layers_png

    write_layers_png(plan, folder / LAYERS_PNG, name)
    if search is not None:
        from .searchplot import write_search_png

        write_search_png(search, folder / SEARCH_PNG, name)


def _trained_part(train: str) -> str:
    parts = []
    for part in train.split(","):
        if part.startswith("last:"):
            k = int(part[5:])
            parts.append(f"the last {k} kept block" + "s" * (k > 1))
        elif part == "head":
            parts.append("the LM head")
    return " and ".join(parts)


def _healing(record: ExportRecord) -> str:
    h = record.healing
    if h is None:
        return ""
    how = (
        f"LoRA rank {h.lora_rank} (peft), merged"
        if h.lora_rank
        else f"full fine-tuning of {_trained_part(h.train)}"
        if h.train
        else "full fine-tuning of the decoder blocks"
    )
    if h.processes > 1:
        how += f", on {h.processes} processes"
    objective = f"distillation from `{h.teacher}` (KL to its logits)" if h.method == "distill" else "next-token loss"
    windows = f" ({h.score_seq_len}-token windows)" if h.score_seq_len else ""
    rows = [f"| model | held-out perplexity{windows} |", "|---|---:|"]
    rows += [f"| {k} | {fmt(h.perplexity[k], 'ppl')} |" for k in ("source", "pruned", "healed") if k in h.perplexity]
    return (
        f"\n## Healing\n\nAfter the surgery the weights were trained: {objective}, {how}, on {h.text}: "
        f"{h.tokens:,} tokens in {h.steps} steps, learning rate {h.lr:g}, seed {h.seed}, {h.seconds:.0f} s; "
        f"{h.tensors_trained} tensors changed. Scores on {h.score_text}, which healing never saw:\n\n"
        + "\n".join(rows)
        + "\n"
    )
