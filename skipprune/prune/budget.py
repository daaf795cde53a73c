"""What a plan search must remove (budgets), what each removal costs (a cost model), and which removals it may
choose (candidates).

Budgets, several at once, all to be met:
    params:P%    at least P % of the model's parameters (embeddings and head included in the total)
    attn:P%      the attention sublayer of at least round(P % of the layers) layers; kv:P% is the same
                 (a layer without attention keeps no KV cache)
    mlp:P%       the MLP sublayer of at least round(P % of the layers) layers
    blocks:N     at least N whole decoder blocks
    latency:P%   at least P % of the prefill FLOPs (a cost model, below)
A removed block counts for attn, mlp and blocks alike. Percentages of layers round like SPEC's last:P%.

The latency cost model: matmul FLOPs to predict one token for `batch` prompts of `prompt_tokens` tokens, as
transformers computes it (the head runs on the last position only): per layer, attention 2·B·T·(its
weights) + 2·B·T²·heads·head_dim (scores and weighted values, causal: half of T²), the MLP 2·B·T·(its
weights, for an MoE the router, the shared experts and top-k of the routed experts' share); the head
2·B·vocab·hidden. On this project's CPU benchmark (README: prefill speed-up against the FLOP ideal) measured
prefill speed-ups were 93-107 % of this ideal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import PlanError
from .plan import PrunePlan, parse_spec

KINDS = ("attention", "mlp", "block")
_BUDGET_HELP = "use params:P%, attn:P% (or kv:P%), mlp:P%, latency:P% or blocks:N, e.g. attn:33%"


@dataclass(frozen=True)
class Budget:
    kind: str  # params, attn, mlp, blocks, latency
    value: float  # a fraction (0-1) for percentages, a count for blocks

    @property
    def spec(self) -> str:
        return f"blocks:{int(self.value)}" if self.kind == "blocks" else f"{self.kind}:{self.value * 100:g}%"


def parse_budget(spec: str) -> Budget:
    text = spec.strip().replace(" ", "")
    m = re.fullmatch(r"(params|attn|kv|mlp|latency|blocks):(\d+(?:\.\d+)?)(%?)", text)
    if not m:
        raise PlanError(f"bad --budget {spec!r}: {_BUDGET_HELP}")
    kind, number, percent = m.groups()
    kind = "attn" if kind == "kv" else kind
    if kind == "blocks":
        if percent or "." in number or int(number) < 1:
            raise PlanError(f"bad --budget {spec!r}: blocks takes a whole number of blocks, e.g. blocks:4")
        return Budget(kind, int(number))
    if not percent:
        raise PlanError(f"bad --budget {spec!r}: {kind} takes a percentage, e.g. {kind}:25%")
    share = float(number) / 100
    if not 0 < share < 1:
        raise PlanError(f"bad --budget {spec!r}: the share must be between 0% and 100%")
    return Budget(kind, share)


def parse_budgets(specs) -> list[Budget]:
    items = [s for spec in ([specs] if isinstance(specs, str) else specs or []) for s in spec.split(",") if s.strip()]
    if not items:
        raise PlanError(f"no --budget given: {_BUDGET_HELP}")
    budgets = [parse_budget(s) for s in items]
    kinds = [b.kind for b in budgets]
    if len(set(kinds)) != len(kinds):
        raise PlanError(f"--budget names {max(kinds, key=kinds.count)} twice; give each kind once")
    return budgets


def parse_kinds(text: str | None, budgets: list[Budget] = ()) -> tuple[str, ...]:
    """'attention,mlp,block' (also attn, blocks) -> the candidate kinds, in KINDS order. Without `text`: attention
    sublayers for attention budgets alone, MLPs for MLP budgets alone, all three kinds otherwise."""
    if not text:
        kinds = {b.kind for b in budgets}
        return ("attention",) if kinds == {"attn"} else ("mlp",) if kinds == {"mlp"} else KINDS
    alias = {"attn": "attention", "attention": "attention", "mlp": "mlp", "block": "block", "blocks": "block"}
    words = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in words if w not in alias]
    if bad or not words:
        raise PlanError(f"bad --kinds {text!r}: use a comma list of attention, mlp and block")
    return tuple(k for k in KINDS if k in {alias[w] for w in words})


def parse_keep(text: str | None, num_layers: int) -> frozenset[int]:
    """'first:N,last:N' (either or both; also any SPEC item: indices, ranges, last:P%) -> layers never removed."""
    if not text:
        return frozenset()
    kept: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first = re.fullmatch(r"first:(\d+)", part)
        if first and int(first.group(1)) > num_layers:
            raise PlanError(f"--keep {text!r}: {part} asks for more than the model's {num_layers} layers")
        try:
            kept |= set(range(int(first.group(1)))) if first else parse_spec(part, num_layers)
        except PlanError as e:
            raise PlanError(f"bad --keep {text!r}: {e}; e.g. first:2,last:2") from None
    return frozenset(kept)


@dataclass(frozen=True)
class Costs:
    """Per layer: parameters and prefill FLOPs of its attention sublayer, its MLP and the whole block; totals."""

    attention_params: tuple[int, ...]
    mlp_params: tuple[int, ...]
    block_params: tuple[int, ...]
    total_params: int
    attention_flops: tuple[float, ...]
    mlp_flops: tuple[float, ...]
    total_flops: float
    # the serving format writes an all-zero FFN of width 256 where a layer keeps attention but loses its MLP
    stand_in_params: int = 0
    stand_in_flops: float = 0.0
    prompt_tokens: int = 1024
    batch: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.block_params)

    def removed_params(self, plan: PrunePlan) -> int:
        a, m = plan.drop_attention, plan.drop_mlp
        return (
            sum(self.attention_params[i] for i in a - m)
            + sum(self.mlp_params[i] - self.stand_in_params for i in m - a)
            + sum(self.block_params[i] for i in a & m)
        )

    def removed_flops(self, plan: PrunePlan) -> float:
        a, m = plan.drop_attention, plan.drop_mlp
        return (
            sum(self.attention_flops[i] for i in a - m)
            + sum(self.mlp_flops[i] - self.stand_in_flops for i in m - a)
            + sum(self.attention_flops[i] + self.mlp_flops[i] for i in a & m)
        )


def layer_count(share: float, num_layers: int) -> int:
    """round(share of the layers), halves up, at least 1 (as SPEC's last:P%)."""
    return max(1, math.floor(num_layers * share + 0.5))


def amount(budget: Budget, plan: PrunePlan, costs: Costs) -> float:
    """How much of `budget`'s kind `plan` removes, in the budget's unit."""
    if budget.kind == "params":
        return costs.removed_params(plan) / costs.total_params
    if budget.kind == "latency":
        return costs.removed_flops(plan) / costs.total_flops
    if budget.kind == "attn":
        return len(plan.drop_attention)
    if budget.kind == "mlp":
        return len(plan.drop_mlp)
    return len(plan.dropped_blocks)


def target(budget: Budget, num_layers: int) -> float:
    return layer_count(budget.value, num_layers) if budget.kind in ("attn", "mlp") else budget.value


def met(budgets: list[Budget], plan: PrunePlan, costs: Costs) -> bool:
    return all(amount(b, plan, costs) >= target(b, costs.num_layers) - 1e-12 for b in budgets)


def progress(budgets: list[Budget], before: PrunePlan, after: PrunePlan, costs: Costs) -> float:
    """How far a step from `before` to `after` goes towards the budgets still unmet: the sum, over those, of
    the share of what is still needed that the step covers (0 when it helps none)."""
    total = 0.0
    for b in budgets:
        need = target(b, costs.num_layers) - amount(b, plan=before, costs=costs)
        if need > 1e-12:
            gained = amount(b, after, costs) - amount(b, before, costs)
            total += max(0.0, min(gained, need)) / need
    return total


def check_reachable(budgets: list[Budget], num_layers: int, keep: frozenset[int], kinds: tuple[str, ...]) -> None:
    """Refuse at once a budget that no plan can meet (one attention and one block must stay)."""
    free = num_layers - len(keep)
    room = {"attn": free if keep else num_layers - 1, "mlp": free, "blocks": min(free, num_layers - 1)}
    for b in budgets:
        if b.kind in room and target(b, num_layers) > room[b.kind]:
            raise PlanError(
                f"--budget {b.spec} asks for {int(target(b, num_layers))} of {num_layers} layers but at most "
                f"{room[b.kind]} can go (a model keeps one attention and one block; --keep spares {len(keep)}); "
                "lower it"
            )
    needs = {"attn": ("attention", "block"), "mlp": ("mlp", "block"), "blocks": ("block", "attention")}
    for b in budgets:
        if b.kind in needs and not set(needs[b.kind]) & set(kinds):
            raise PlanError(f"--budget {b.spec} cannot be met with --kinds {','.join(kinds)}; allow {needs[b.kind][0]}")


def check_within_reach(budgets: list[Budget], costs: Costs, kinds: tuple[str, ...], keep: frozenset[int]) -> None:
    """Refuse, before measuring, budgets that even removing every allowed unit would not meet."""
    n = costs.num_layers
    free = set(range(n)) - keep
    attn = free if {"attention", "block"} & set(kinds) else set()
    mlp = free if {"mlp", "block"} & set(kinds) else set()
    if attn and len(attn) == n:  # one attention stays; its layer keeps its MLP too unless MLPs alone may go
        spare = min(attn, key=lambda i: costs.attention_params[i])
        attn = attn - {spare}
        mlp = mlp - {spare} if "mlp" not in kinds else mlp
    most = PrunePlan(n, attn, mlp)
    short = [b for b in budgets if amount(b, most, costs) < target(b, n) - 1e-12]
    if short:
        reach = ", ".join(f"{b.kind} {amount(b, most, costs):.0%}" for b in short if b.kind in ("params", "latency"))
        raise PlanError(
            f"--budget {', '.join(b.spec for b in short)} cannot be met with --kinds {','.join(kinds)}"
            + (f" (at most {reach})" if reach else "")
            + (f" and --keep sparing {len(keep)} layers" if keep else "")
            + ": allow more kinds, keep fewer layers, or lower the budget"
        )


def shares(plan: PrunePlan, costs: Costs) -> dict:
    """What a plan removes, for records and tables."""
    return {
        "params": costs.removed_params(plan) / costs.total_params,
        "latency": costs.removed_flops(plan) / costs.total_flops,
        "attention": len(plan.drop_attention),
        "mlp": len(plan.drop_mlp),
        "blocks": len(plan.dropped_blocks),
    }
