"""The seed paper's grid, in memory: attention, MLP or whole blocks removed from the last layers, keeping
100 / 90 / 75 / 66 % of them, with and without keeping the final layer (Tyukin et al. 2024, Tables 1-3, 7).

Sublayers are removed in place with the very function the exported modeling file uses (one definition of
"removed"), so perplexity equals that of the export, and speed reflects the work actually skipped; the model
is restored after each point. Latency: at each point the full and the pruned model take turns.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

from ..cards.card import NOISE_NOTE, noisy, ratio
from ..prune.bypass import removed_in_place
from ..prune.family import Family
from ..prune.suggest import KEEP, KINDS, paper_grid
from ..records import PerplexityProtocol, encode
from . import speed

log = logging.getLogger(__name__)


@dataclass
class SweepRow:
    kind: str
    kept_percent: int
    keep_last_layer: bool
    removed_layers: list[int]
    perplexity: float
    perplexity_protocol: PerplexityProtocol
    one_token_s: float | None = None  # batch 8, 50-token prompts
    full_model_one_token_s: float | None = None
    tasks: dict[str, float] = field(default_factory=dict)
    latency_spread: float | None = None  # the larger relative spread of the two timings' repeats

    @property
    def latency_ratio(self) -> float | None:
        return (
            self.one_token_s / self.full_model_one_token_s if self.one_token_s and self.full_model_one_token_s else None
        )


def run_sweep(model, family: Family, measure_point, with_speed: bool = True) -> list[SweepRow]:
    """`measure_point(model) -> (perplexity, protocol, task scores)` is called at every grid point."""
    n = len(family.layers(model))
    rows = []
    prompts = speed.prompt_batch(model, speed.BATCH, 50)
    for point in paper_grid(n):
        plan = point.plan
        label = "full model" if point.kind == "none" else f"{point.kind} kept {point.kept_percent}%"
        log.info("  %s%s ...", label, " +last" if point.keep_last_layer else "")
        with removed_in_place(model, plan, family):
            ppl, protocol, tasks = measure_point(model)
        latency = base = spread = None
        if with_speed:  # full and pruned take turns at every point, so each ratio compares like with like

            def pruned(plan=plan):
                with removed_in_place(model, plan, family):
                    speed.predict_one_token(model, prompts)

            times = speed.alternating_times([lambda: speed.predict_one_token(model, prompts), pruned])
            base, latency = map(statistics.median, times)
            spread = round(max(map(speed.relative_spread, times)), 4)
        removed = sorted(plan.drop_attention | plan.drop_mlp)
        rows.append(
            SweepRow(
                point.kind,
                point.kept_percent,
                point.keep_last_layer,
                removed,
                ppl,
                protocol,
                latency,
                base,
                tasks,
                spread,
            )
        )
    return rows


def tables(rows: list[SweepRow]) -> str:
    """One table per kind, laid out like the paper's: kept %, then without / with the final layer kept."""
    base = rows[0]
    proto = base.perplexity_protocol
    out = []
    for kind in KINDS:
        out.append(f"\n{kind} removed from the last layers (ppl: {proto.windows} windows of {proto.seq_len} tokens)")
        out.append(
            f"{'kept':>6} {'layers removed':>18} {'ppl':>9} {'ppl (+last)':>12} {'latency':>8} {'lat (+last)':>12}"
        )
        out.append(f"{'100%':>6} {'-':>18} {base.perplexity:>9.2f} {base.perplexity:>12.2f} {'1.000':>8} {'1.000':>12}")
        for keep in KEEP[1:]:
            a, b = (
                next(r for r in rows if r.kind == kind and r.kept_percent == keep and r.keep_last_layer == last)
                for last in (False, True)
            )

            def lat(r):
                return ratio(r.full_model_one_token_s, r.one_token_s, r.latency_spread)

            removed = ",".join(map(str, a.removed_layers))
            out.append(f"{keep:>5}% {removed:>18} {a.perplexity:>9.2f} {b.perplexity:>12.2f} {lat(a):>8} {lat(b):>12}")
    if any(noisy(r.full_model_one_token_s, r.one_token_s, r.latency_spread) for r in rows):
        out.append(f"\n{NOISE_NOTE}")
    return "\n".join(out)


def rows_to_json(rows: list[SweepRow]) -> list[dict]:
    return [{**encode(r), "latency_ratio": r.latency_ratio} for r in rows]
