"""README.md model card of an export: what was removed, how it was checked, how to load it."""

from __future__ import annotations

from pathlib import Path

from ..prune.plan import format_indices

CITATION = (
    "Tyukin et al., *Attention Is All You Need But You Don't Need All Of It For Inference of Large Language "
    "Models* (2024), arXiv:2407.15516"
)


def render_card(result, command: str | None = None) -> str:
    plan, src = result.plan, result.source
    tags = ["skipprune", "pruned"]
    attn_only = plan.drop_attention - plan.drop_mlp
    mlp_only = plan.drop_mlp - plan.drop_attention
    tags += [t for t, on in (("attention-pruning", attn_only), ("mlp-pruning", mlp_only), ("block-pruning", plan.dropped_blocks)) if on]
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", *[f"- {t}" for t in tags]]
    if src.revision:  # a Hub source: link the base model
        meta.append(f"base_model: {src.id}")
    meta.append("---")
    rows = ["| output layer | source layer | attention | MLP |", "|---:|---:|:---:|:---:|"]
    rows += [f"| {lyr.output} | {lyr.source} | {'yes' if lyr.attention else '**removed**'} | {'yes' if lyr.mlp else '**removed**'} |" for lyr in plan.layers]
    if plan.dropped_blocks:
        rows.append(f"\nWhole blocks removed (source numbering): {format_indices(plan.dropped_blocks)}.")
    trust = "" if result.stock else ", trust_remote_code=True"
    numerics = result.verification.get("numerics")
    checked = (
        f"logits equal the source model with the same sublayers bypassed (max |diff| {numerics['max_abs_logit_diff']:.3g}, fp32)"
        if isinstance(numerics, dict)
        else f"numeric check {numerics}"
    )
    body = f"""
# {Path(result.output).name}

Pruned from `{src.id}`{f" (revision `{src.revision}`)" if src.revision else ""} with [skipprune](https://github.com/skipprune/skipprune):
{plan.describe()}. Size: {result.bytes_out / 2**20:.1f} MiB of weights (source: {result.bytes_in / 2**20:.1f} MiB).

## Layers

{chr(10).join(rows)}

## Verification

Structure: every tensor the model expects is present, and every kept tensor is byte-identical to the source.
Numerics: {checked}.

## Load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO"{trust})
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")
```

## Reproduce

```
{command or "skipprune export ..."}
```

## Scores

Not measured.

## Citation

{CITATION}
"""
    return "\n".join(meta) + "\n" + body.lstrip("\n")


def write_card(folder: Path, result, command: str | None = None) -> None:
    (Path(folder) / "README.md").write_text(render_card(result, command), encoding="utf-8")
