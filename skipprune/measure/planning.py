"""search(): a measured plan for a budget (the algorithm: skipprune.prune.search; the objective, with prefix
reuse: prefix.py), then, on a held-out text, the found plan against every one-shot strategy at the same budget.
"""

from __future__ import annotations

import functools
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import formats
from ..errors import MeasureError, PlanError
from ..export import layout
from ..families.config import layer_count, text_config
from ..prune.budget import (
    Costs,
    check_reachable,
    check_within_reach,
    met,
    parse_budgets,
    parse_keep,
    parse_kinds,
    shares,
)
from ..prune.bypass import removed_in_place
from ..prune.family import Family
from ..prune.plan import PrunePlan
from ..prune.search import Move, Search
from ..records import ModelShape, PlanFile, PlanScore, PlanSearch
from ..system import placement_options
from .importance import measure_importance
from .perplexity import perplexity
from .prefix import OBJECTIVES, PrefixObjective
from .runner import load_model, pick_device, prepare_stock
from .speed import count_params
from .text import calibration_note, overlap, read_text, token_windows

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    plan: PrunePlan
    record: PlanFile

    def save(self, path) -> Path:
        return self.record.save(Path(path))


def search(
    model: str,
    budget: str | list[str],
    *,
    kinds: str | None = None,
    keep: str | None = None,
    objective: str = "kl",
    text: str | None = None,
    samples: int = 16,
    seq_len: int = 128,
    eval_text: str | None = None,
    eval_samples: int | None = None,
    eval_seq_len: int = 256,
    format: str = "default",
    swap: bool = True,
    screen: int | None = 4,
    prompt_tokens: int = 1024,
    batch: int = 1,
    batch_windows: int = 4,
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | dict | None = None,
) -> SearchResult:
    """Find which sublayers of `model` to remove for `budget` (e.g. "attn:33%", or several, all met) by measuring
    the objective (`kl` from the source's next-token distribution, or `perplexity`) on `samples` windows of
    `seq_len` tokens of `text`. With `eval_text`, the found plan and the one-shot strategies at the same budget
    are scored by held-out perplexity. Returns the plan and its plan-file record (`.save(path)`)."""
    budgets = parse_budgets(budget)
    candidate_kinds = parse_kinds(kinds, budgets)
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}: use {' or '.join(OBJECTIVES)}")
    formats.check_option(format)
    if min(samples, seq_len - 1, prompt_tokens, batch, batch_windows) < 1:
        raise PlanError("--samples, --prompt-tokens, --batch must be at least 1 and --seq-len at least 2")
    calibration, text_name = read_text(text)
    held_out = eval_name = None
    if eval_text is not None:
        held_out, eval_name = read_text(eval_text)
        if overlap(held_out, calibration) > 0.05:
            raise MeasureError(
                f"--eval-text ({eval_name}) overlaps the calibration text ({text_name}): its scores would be on "
                "the text the plan was chosen on; pass another --eval-text (or --text)"
            )
    device_map, max_memory = placement_options(device_map, max_memory)
    prepared, family = prepare_stock(model, device, trust_remote_code, spread=device_map is not None)
    num_layers = prepared_layers(prepared.config)
    keep_layers = parse_keep(keep, num_layers)
    check_reachable(budgets, num_layers, keep_layers, candidate_kinds)
    formats.chosen(format, PrunePlan(num_layers)).check(prepared.config, PrunePlan(num_layers), family, None)
    windows = token_windows(prepared.tokenizer, calibration, seq_len, samples, vocab_size=prepared.vocab_size)
    eval_windows = (
        None
        if held_out is None
        else token_windows(prepared.tokenizer, held_out, eval_seq_len, eval_samples, vocab_size=prepared.vocab_size)
    )
    if note := calibration_note(text):
        log.info(note)
    loaded = load_model(prepared, pick_device(device), device_map, max_memory)
    costs = model_costs(loaded, family, prepared.config, prompt_tokens, batch, format)
    check_within_reach(budgets, costs, candidate_kinds, keep_layers)
    started = time.perf_counter()
    log.info(
        "searching %s for %s over %d windows of %d tokens (objective: %s) ...",
        prepared.label, ", ".join(b.spec for b in budgets), len(windows), seq_len, objective,
    )  # fmt: skip

    source_config = layout.with_layer_types(prepared.config)
    renumbered = functools.cache(
        lambda blocks: layout.check_renumbering(source_config, PrunePlan(num_layers, blocks, blocks), family)
    )

    def allowed(plan: PrunePlan) -> bool:
        """What the export would accept: the family's checks, the serving format's, and blocks the output's
        config rebuilds as they are (Jamba, ...)."""
        try:
            family.check(plan)
            formats.chosen(format, plan).check(prepared.config, plan, family, None)
            renumbered(frozenset(plan.dropped_blocks))
        except PlanError:
            return False
        return True

    with (
        PrefixObjective(loaded, family, windows, objective, batch_windows) as measured,
        tqdm(desc="search step 1", unit="candidate", disable=None, leave=False, file=sys.stderr) as bar,
    ):

        def tick() -> None:
            bar.set_description(f"search {found.phase}", refresh=False)
            bar.update()

        found = Search(measured, costs, budgets, candidate_kinds, keep_layers, allowed, tick, screen or None)
        outcome = found.run(swap=swap)
        shape_config = text_config(prepared.config)
        head = int(shape_config.get("vocab_size") or 0) * int(shape_config.get("hidden_size") or 0)
        forward_equivalents = measured.forward_equivalents(sum(costs.block_params) / costs.num_layers, head)
        evaluations = found.evaluations
        seconds = time.perf_counter() - started
        log.info(
            "found in %.0f s (%d candidates measured, %.1f forward-equivalents): %s",
            seconds, evaluations, forward_equivalents, outcome.plan.describe(),
        )  # fmt: skip
        if eval_windows is not None:
            # for the comparison only, not the search: each candidate alone, measured in full (what the search
            # measured already is not measured again)
            found.phase = "comparison: each candidate alone"
            one_shot = found.one_shot()
    comparison = []
    if eval_windows is not None:
        strategies = _strategies(loaded, family, windows, outcome, found, one_shot)
        comparison = _score(loaded, family, eval_windows, eval_name, strategies, costs)
    record = PlanSearch(
        objective=objective,
        objective_value=outcome.objective,
        text=text_name,
        windows=len(windows),
        seq_len=seq_len,
        tokens=windows.numel(),
        budgets=[b.spec for b in budgets],
        kinds=list(candidate_kinds),
        algorithm=("greedy + swap" if swap else "greedy")
        + (f", screened: each candidate on 2 windows, the {screen} best on all" if screen else ""),
        steps=outcome.steps,
        evaluations=evaluations,
        forward_equivalents=round(forward_equivalents, 2),
        seconds=round(seconds, 1),
        keep=sorted(keep_layers),
        format=format,
        prompt_tokens=prompt_tokens,
        batch=batch,
        greedy_objective=outcome.greedy_objective,
        peak_memory_bytes=peak_memory(),
        eval_text=eval_name,
        eval_windows=len(eval_windows) if eval_windows is not None else None,
        eval_seq_len=eval_seq_len if eval_windows is not None else None,
        comparison=comparison,
    )
    shape = ModelShape(
        label=prepared.label,
        model_type=prepared.config["model_type"],
        num_layers=costs.num_layers,
        hidden_size=shape_config.get("hidden_size"),
        vocab_size=shape_config.get("vocab_size"),
        params=costs.total_params,
    )
    return SearchResult(outcome.plan, PlanFile(shape, outcome.plan, record))


def prepared_layers(config: dict) -> int:

    return int(layer_count(text_config(config)))


def peak_memory() -> int | None:
    """The process's peak resident memory so far (Linux reports KiB)."""
    if sys.platform != "linux":
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the cost model --------------------------------------------------------------------------------------------


def model_costs(model, family: Family, config: dict, prompt_tokens: int, batch: int, format: str) -> Costs:
    """Parameters of each layer's attention, MLP and block, counted on the loaded model, and the prefill FLOPs of
    skipprune.prune.budget's cost model."""
    text = text_config(config)
    layers = family.layers(model)

    def params(layer, names) -> int:
        seen = {id(p): p for n in names for p in getattr(layer, n).parameters()}
        return sum(p.numel() for p in seen.values())

    attention = [params(layer, family.at(i).attention) for i, layer in enumerate(layers)]
    mlp = [params(layer, family.at(i).mlp) for i, layer in enumerate(layers)]
    block = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    hidden = int(text.get("hidden_size") or text.get("n_embd"))
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
    head_dim = int(text.get("head_dim") or hidden // heads)
    experts = text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts")
    active = (text.get("num_experts_per_tok") or experts) / experts if experts else 1.0
    bt = batch * prompt_tokens
    # the quadratic term only where the mixer attends (linear attention, Mamba and convolutions are linear)
    attends = [
        family.mixer_noun == "attention" or "attention" in family.at(i).mixer.split(" + ") for i in range(len(layers))
    ]
    quadratic = 2 * batch * prompt_tokens**2 * heads * head_dim
    attn_flops = [2 * bt * p + quadratic * a for p, a in zip(attention, attends)]
    mlp_flops = [2 * bt * p * active for p in mlp]
    if not family.attention:  # blocks only: the whole block's weights, attention arithmetic included
        attn_flops = [2 * bt * p + 2 * batch * prompt_tokens**2 * heads * head_dim for p in block]
    vocab = int(text.get("vocab_size") or 0)
    head = 2 * batch * vocab * hidden
    stand_in = formats.chosen(format, PrunePlan(len(layers), {0})).removed_mlp_cost(hidden)
    return Costs(
        attention_params=tuple(attention),
        mlp_params=tuple(mlp),
        block_params=tuple(block),
        total_params=count_params(model),
        attention_flops=tuple(float(f) for f in attn_flops),
        mlp_flops=tuple(float(f) for f in mlp_flops),
        total_flops=float(sum(attn_flops) + sum(mlp_flops) + head),
        stand_in_params=stand_in,
        stand_in_flops=float(2 * bt * stand_in),
        prompt_tokens=prompt_tokens,
        batch=batch,
    )


# -- the held-out comparison ---------------------------------------------------------------------------------


def _strategies(model, family: Family, windows, outcome, found: Search, one_shot) -> list[tuple[str, PrunePlan]]:
    """The found plan, greedy's (when the swap pass changed it), and one-shot plans at the same budget: the last
    layers (Tyukin et al.), the candidates that cost least when removed alone (measured), the least important
    by analyze's metrics (ShortGPT's Block Influence, attention / MLP in-out cosine) and the best contiguous
    window of blocks (Gromov et al.)."""
    out = [("search", outcome.plan)]
    if outcome.greedy_plan is not None and outcome.greedy_plan != outcome.plan:
        out.append(("greedy (before the swap pass)", outcome.greedy_plan))
    kind = _one_kind(found)
    n = found.n
    free = [i for i in range(n) if i not in found.keep]
    out.append((f"last-N ({_KIND_WORD[kind]})", found.take([Move.of(kind, i) for i in reversed(free)])))
    out.append(("one-shot measured", found.take([mv for mv, _ in one_shot])))
    imp = measure_importance(model, family, windows)
    score = {
        "attention": lambda i: -imp.attention_cos[i],
        "mlp": lambda i: -imp.mlp_cos[i],
        "block": lambda i: imp.block_influence[i],
    }[kind]
    out.append(
        (f"lowest-importance ({_KIND_WORD[kind]})", found.take([Move.of(kind, i) for i in sorted(free, key=score)]))
    )
    if kind == "block":
        out.append(("best-window (blocks)", _best_window(imp, found)))
    return [(name, plan) for name, plan in out if plan is not None]


_KIND_WORD = {"attention": "attention", "mlp": "MLP", "block": "blocks"}


def _one_kind(found: Search) -> str:
    """The kind a one-shot strategy removes for these budgets: attention or MLP when every budget is about that
    sublayer (or only that kind may go), whole blocks otherwise."""
    budget_kinds = {b.kind for b in found.budgets}
    for kind, word in (("attention", "attn"), ("mlp", "mlp")):
        if budget_kinds == {word} or found.kinds == (kind,):
            return kind
    return "block" if "block" in found.kinds else found.kinds[0]


def _best_window(imp, found: Search) -> PrunePlan | None:
    for size in range(1, found.n):
        dists = imp.angular.get(size)
        if not dists:
            return None
        starts = [s for s in range(len(dists)) if not set(range(s, s + size)) & found.keep]
        if not starts:
            continue
        s = min(starts, key=dists.__getitem__)
        plan = PrunePlan(found.n, set(range(s, s + size)), set(range(s, s + size)))
        if met(found.budgets, plan, found.costs) and found.allows(plan):
            return plan
    return None


def _score(model, family: Family, windows, name: str, strategies, costs: Costs) -> list[PlanScore]:
    rows = [PlanScore("source (nothing removed)", PrunePlan(costs.num_layers), 0.0, 0.0, math.nan)]
    rows[0].perplexity = perplexity(model, windows, name)[0]
    for strategy, plan in strategies:
        log.info("held-out perplexity of the %s plan ...", strategy)
        with removed_in_place(model, plan, family):
            ppl = perplexity(model, windows, name)[0]
        s = shares(plan, costs)
        rows.append(PlanScore(strategy, plan, s["params"], s["latency"], ppl))
    return rows
