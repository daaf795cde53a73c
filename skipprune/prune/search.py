"""The plan search: which sublayers to remove for a budget, chosen by measuring the model, not by a one-shot
metric. The measuring is someone else's (an `Objective`, see skipprune.measure.prefix); this module only
decides, so it is testable against brute force and free of torch.

1. Greedy: from the full model, remove one candidate at a time (an attention sublayer, an MLP sublayer or a
   whole block), each time the one with the smallest rise of the objective per unit of progress towards the
   budgets still unmet (for a count budget such as attn:33 %, simply the smallest objective), until every
   budget is met.
2. Swap pass: while some exchange of one removed unit for one kept candidate lowers the objective with every
   budget still met, make the best such exchange.
(`one_shot` measures every candidate alone, in full: the one-shot "measured" strategy the search is compared
with.)

Both are exact about their choices while skipping work: the objective is a sum of non-negative per-token
terms, so a candidate whose partial sum already rules it out is abandoned (`bound`), and ties go to the first
candidate in a fixed order (kind, then layer), whatever order they were measured in. That bound rarely fires
before most windows are measured (one window is a sixteenth of the sum), so exact greedy measures nearly every
candidate in full at every step; screening (the default in `skipprune search`) trades that for speed: every
option is first measured on the first two calibration windows only, and the few best of those in full; the
choice is then greedy's whenever greedy's winner screens among them. A screened swap pass only brings in the
candidates that scored best when last measured.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import PlanError
from .budget import KINDS, Budget, Costs, amount, met, progress, shares, target
from .plan import PrunePlan

log = logging.getLogger(__name__)


class Objective(Protocol):
    def value(
        self, plan: PrunePlan, start: int, bound: float | None = None, batches: int | None = None
    ) -> float | None:
        """The objective of `plan`, which computes like the current plan below layer `start`; None when it
        is sure to exceed `bound`. With `batches`, over the first few batches of windows only (screening)."""

    def commit(self, plan: PrunePlan, start: int) -> None:
        """`plan` becomes the current plan (it differs from the last one from layer `start` on)."""


@dataclass(frozen=True, order=True)
class Move:
    """Removing (or, in a swap, restoring) one unit: the attention sublayer, the MLP or the whole block of a
    source layer. Ordered by kind, then layer: the tie-break."""

    rank: int  # KINDS.index(kind)
    layer: int

    @property
    def kind(self) -> str:
        return KINDS[self.rank]

    @classmethod
    def of(cls, kind: str, layer: int) -> Move:
        return cls(KINDS.index(kind), layer)

    def sets(self) -> tuple[frozenset, frozenset]:
        attn = self.kind in ("attention", "block")
        mlp = self.kind in ("mlp", "block")
        return frozenset([self.layer] if attn else []), frozenset([self.layer] if mlp else [])

    def remove(self, plan: PrunePlan) -> PrunePlan:
        a, m = self.sets()
        return PrunePlan(plan.num_layers, plan.drop_attention | a, plan.drop_mlp | m)

    def restore(self, plan: PrunePlan) -> PrunePlan:
        a, m = self.sets()
        return PrunePlan(plan.num_layers, plan.drop_attention - a, plan.drop_mlp - m)

    def __str__(self) -> str:
        return f"{self.kind} {self.layer}"


@dataclass
class Step:
    """One accepted move of the search, for the trace in the plan file."""

    step: int
    move: str  # "remove attention 12", or "swap: restore mlp 3, remove mlp 20"
    objective: float
    params_removed: float  # share of the model's parameters
    latency_removed: float  # share of the prefill FLOPs (cost model)
    attention_removed: int
    mlp_removed: int
    blocks_removed: int
    evaluated: int  # candidates measured at this step
    cut_short: int  # of those, abandoned once they could no longer win
    screened: int = 0  # candidates first measured on the screening windows only
    seconds: float = 0.0


@dataclass
class Outcome:
    plan: PrunePlan
    objective: float
    steps: list[Step]
    greedy_objective: float | None = None  # before the swap pass
    greedy_plan: PrunePlan | None = None


def fits_kinds(plan: PrunePlan, kinds: tuple[str, ...]) -> bool:
    a, m = plan.drop_attention, plan.drop_mlp
    return (
        (not (a - m) or "attention" in kinds)
        and (not (m - a) or "mlp" in kinds)
        and (not (a & m) or "block" in kinds or {"attention", "mlp"} <= set(kinds))
    )


class Search:
    """One search over `objective` for `budgets`. `allowed(plan)` says whether the family and the output
    format can carry a plan out; `keep` names source layers never touched."""

    def __init__(
        self,
        objective: Objective,
        costs: Costs,
        budgets: list[Budget],
        kinds: tuple[str, ...] = KINDS,
        keep: frozenset[int] = frozenset(),
        allowed: Callable[[PrunePlan], bool] = lambda plan: True,
        on_eval: Callable[[], None] = lambda: None,
        screen: int | None = None,
        screen_batches: int = 2,
    ):
        self.objective, self.costs, self.budgets = objective, costs, budgets
        self.kinds, self.keep, self.allowed, self.on_eval = kinds, keep, allowed, on_eval
        self.n = costs.num_layers
        self.screen, self.screen_batches = screen, screen_batches
        self.evaluations = 0  # measured in full
        self.phase = "step 1"  # for a progress bar

    # -- candidates ----------------------------------------------------------------------------------------

    def removals(self, plan: PrunePlan) -> list[Move]:
        """Every move that removes one more unit and leaves a plan the family, format and kinds allow."""
        a, m = plan.drop_attention, plan.drop_mlp
        moves = []
        for kind in self.kinds:
            for i in range(self.n):
                if i in self.keep:
                    continue
                free = {"attention": i not in a, "mlp": i not in m, "block": i not in a and i not in m}[kind]
                if free and self.allows(Move.of(kind, i).remove(plan)):
                    moves.append(Move.of(kind, i))
        return moves

    def restorations(self, plan: PrunePlan) -> list[Move]:
        a, m = plan.drop_attention, plan.drop_mlp
        units = [Move.of("attention", i) for i in a] + [Move.of("mlp", i) for i in m]
        units += [Move.of("block", i) for i in a & m]
        return sorted(u for u in units if fits_kinds(u.restore(plan), self.kinds))

    def allows(self, plan: PrunePlan) -> bool:
        if not fits_kinds(plan, self.kinds):
            return False
        try:
            plan.validate(allow_empty=True)
        except PlanError:
            return False
        return self.allowed(plan)

    # -- the search -----------------------------------------------------------------------------------------

    def run(self, swap: bool = True) -> Outcome:
        plan = PrunePlan(self.n)
        current = self._value(plan, 0, None)
        self.objective.commit(plan, 0)
        steps: list[Step] = []
        order: dict = {}  # each option's last score: measured in that order, the likely winners come first
        while not met(self.budgets, plan, self.costs):
            started = time.perf_counter()
            options = []
            for mv in self.removals(plan):
                new = mv.remove(plan)
                prog = progress(self.budgets, plan, new, self.costs)
                if prog > 0:
                    options.append((mv, new, mv.layer, prog))
            if not options:
                raise PlanError(self._unreachable(plan))
            chosen, counts = self._choose(plan, current, options, order)
            assert chosen is not None  # the first option measured in full is never cut short
            _, mv, current, plan, start = chosen
            self.objective.commit(plan, start)
            steps.append(self._step(len(steps) + 1, f"remove {mv}", plan, current, counts, started))
            left = self._steps_left(plan, len(steps))
            log.info(
                "step %d: remove %s -> objective %.5f (%d candidates, %.0f s)%s",
                len(steps), mv, current, len(options), steps[-1].seconds,
                f"; about {left} more step(s), {left * steps[-1].seconds:.0f} s, before the swap pass" if left else "",
            )  # fmt: skip
            self.phase = f"step {len(steps) + 1}"
        greedy, greedy_plan = current, plan
        swaps = 0
        while swap:
            swaps += 1
            self.phase = f"swap pass {swaps}"
            started = time.perf_counter()
            options = []
            for out in self.restorations(plan):
                base = out.restore(plan)
                for into in self._runners_up(self.removals(base), order):
                    new = into.remove(base)
                    if into != out and new != plan and met(self.budgets, new, self.costs):
                        options.append(((out, into), new, min(out.layer, into.layer), 1.0))
            chosen, counts = self._choose(plan, current, options, order, ceiling=0.0)
            if chosen is None:
                break
            _, (out, into), current, plan, start = chosen
            self.objective.commit(plan, start)
            move = f"swap: restore {out}, remove {into}"
            steps.append(self._step(len(steps) + 1, move, plan, current, counts, started))
            log.info("step %d: %s -> objective %.5f", len(steps), move, current)
        return Outcome(plan, current, steps, greedy_objective=greedy, greedy_plan=greedy_plan)

    def one_shot(self) -> list[tuple[Move, float]]:
        """Every candidate removed alone from the full model, measured in full, lowest objective first (ties: the
        fixed order). Leaves the objective's current plan at the full model."""
        empty = PrunePlan(self.n)
        self.objective.commit(empty, 0)
        measured = []
        for mv in self.removals(empty):
            value = self._value(mv.remove(empty), mv.layer, None)
            assert value is not None  # no bound: measured to the end
            measured.append((mv, value))
        return sorted(measured, key=lambda x: (x[1], x[0]))

    def take(self, moves: list[Move]) -> PrunePlan | None:
        """A one-shot plan: `moves` in their order, each kept if it helps an unmet budget and is allowed, until
        every budget is met; None when they run out first."""
        plan = PrunePlan(self.n)
        for mv in moves:
            if met(self.budgets, plan, self.costs):
                break
            new = mv.remove(plan)
            if progress(self.budgets, plan, new, self.costs) > 0 and self.allows(new):
                plan = new
        return plan if met(self.budgets, plan, self.costs) else None

    def _steps_left(self, plan: PrunePlan, done: int) -> int:
        """About how many greedy steps remain: for each unmet budget, what is still needed over the mean gain of
        the steps so far."""
        left = 0
        for b in self.budgets:
            have = amount(b, plan, self.costs)
            need = target(b, self.n) - have
            if need > 1e-12:
                left = max(left, math.ceil(need / (have / done)) if have > 0 else 1)
        return left

    def _runners_up(self, moves: list[Move], order: dict) -> list[Move]:
        """What a swap may bring in: with screening, the 2 x `screen` moves that scored best when last measured,
        in full or screened (the greedy steps' runners-up); otherwise every move."""
        if not self.screen:
            return moves
        return sorted(moves, key=lambda mv: (order.get(mv, float("inf")), mv))[: 2 * self.screen]

    def _choose(self, plan, current: float, options: list, order: dict, ceiling=None):
        """The option (key, plan, first changed layer, progress) with the lowest score (rise of the objective per
        unit of progress; ties: the lowest key) below `ceiling`, as (score, key, value, plan, start); and
        (measured, cut short, screened) counts. With screening, every option is first measured on the first
        batches of windows only, and the `screen` best of them in full. (Confirming only the exchanges that
        scored below `ceiling` on the screening windows lost the real model's one useful swap: 2 windows are
        too few to tell.)"""
        screened = 0
        if self.screen and len(options) > self.screen:
            base = self._value(plan, self.n, None, self.screen_batches)  # the current plan: its tail only
            partial = {}
            for key, new, start, prog in options:
                partial[key] = (self._value(new, start, None, self.screen_batches) - base) / prog
                order[key] = partial[key]  # until measured in full: the swap pass draws its runners-up from these
            screened = len(options)
            options = sorted(options, key=lambda o: (partial[o[0]], o[0]))[: self.screen]
        else:
            options = sorted(options, key=lambda o: (order.get(o[0], float("inf")), o[0]))
        best = None
        evaluated = cut = 0
        for key, new, start, prog in options:
            limit = best[0] if best is not None else ceiling
            bound = None if limit is None else current + limit * prog
            value = self._value(new, start, bound)
            evaluated += 1
            if value is None:
                cut += 1
                continue
            score = (value - current) / prog
            order[key] = score
            if (ceiling is None or score < ceiling) and (best is None or (score, key) < (best[0], best[1])):
                best = (score, key, value, new, start)
        return best, (evaluated, cut, screened)

    def _value(self, plan: PrunePlan, start: int, bound: float | None, batches: int | None = None) -> float | None:
        self.evaluations += batches is None
        self.on_eval()
        return self.objective.value(plan, start, bound, batches)

    def _step(self, k, move, plan, value, counts, started) -> Step:
        s = shares(plan, self.costs)
        return Step(
            k, move, value, s["params"], s["latency"], s["attention"], s["mlp"], s["blocks"], *counts,
            seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip

    def _unreachable(self, plan: PrunePlan) -> str:
        unmet = [b.spec for b in self.budgets if amount(b, plan, self.costs) < target(b, self.n) - 1e-12]
        return (
            f"the budget {', '.join(unmet)} cannot be met with the candidates left (kinds {', '.join(self.kinds)}"
            + (f", {len(self.keep)} layers kept" if self.keep else "")
            + "): allow more --kinds, keep fewer layers, or lower the budget"
        )
