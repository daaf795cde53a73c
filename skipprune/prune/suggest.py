"""Which layers to remove: per-layer importance numbers (measured by skipprune.measure.importance) turned
into plans for a budget, and the seed paper's grid of plans.

The numbers, per decoder layer, averaged over calibration tokens:
- cosine between the residual stream before and after the attention sublayer, the MLP sublayer, and the
  whole block; Block Influence BI = 1 - cos(block in, block out) (ShortGPT, Men et al. 2024);
- angular distance arccos(cos)/pi between the input of layer l and of layer l+n, for windows of n layers
  (Gromov et al. 2024): the best window of n layers to remove is the one with the smallest distance;
- the FFN in/out cosine curve and its "cold" regions: the first and last layers where the FFN changes the
  residual stream most, which FFN-SkipLLM (Jaiswal et al. 2024) never skips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PlanError
from .plan import PrunePlan


@dataclass
class Importance:
    attention_cos: list[float]  # per layer, mean over tokens
    mlp_cos: list[float]
    block_cos: list[float]
    angular: dict[int, list[float]]  # n -> distance between layer l and l+n inputs, for l = 0..L-n
    tokens: int
    # per layer, its token mixer where the family's is not always attention (a hybrid): 'attention' is then the
    # mixer, which `--drop-mixer` removes
    mixers: list[str] = field(default_factory=list)

    @property
    def block_influence(self) -> list[float]:
        return [1 - c for c in self.block_cos]

    def cold_regions(self) -> tuple[int, int]:
        """(cold_start, cold_end): leading / trailing layers whose FFN changes the residual at least twice as
        much as the median layer's (1 - cos >= 2 x median)."""
        change = [1 - c for c in self.mlp_cos]
        bar = 2 * sorted(change)[len(change) // 2]
        start = next((i for i, c in enumerate(change) if c < bar), len(change))
        end = next((i for i, c in enumerate(reversed(change)) if c < bar), len(change))
        return start, end

    def to_dict(self) -> dict:
        start, end = self.cold_regions()
        return {
            "tokens": self.tokens,
            "layers": [
                {"layer": i, "attention_cos": a, "mlp_cos": m, "block_cos": b, "block_influence": 1 - b}
                | ({"mixer": self.mixers[i]} if self.mixers else {})
                for i, (a, m, b) in enumerate(zip(self.attention_cos, self.mlp_cos, self.block_cos))
            ],
            "angular_distance": {str(n): d for n, d in self.angular.items()},
            "ffn_cold_regions": {"cold_start": start, "cold_end": end},
        }


def parse_target(target: str) -> tuple[str, float]:
    """'attn:25%' (attention layers), 'kv:25%' (KV cache; same as attention), 'params:10%' -> (kind, fraction)."""
    kind, _, value = target.partition(":")
    if kind not in ("attn", "kv", "params") or not value.endswith("%"):
        raise PlanError(f"bad --suggest {target!r}: use attn:P%, kv:P% or params:P% (e.g. attn:25%)")
    try:
        share = float(value[:-1]) / 100
    except ValueError:
        raise PlanError(f"bad --suggest {target!r}: the percentage is not a number") from None
    if not 0 < share < 1:
        raise PlanError(f"bad --suggest {target!r}: the share must be between 0% and 100%")
    return kind, share


@dataclass
class Suggestion:
    strategy: str
    why: str
    plan: PrunePlan

    def command(self, model: str, output: str = "OUTPUT", mixers: list[str] = ()) -> str:
        """The export command; `mixers` (Importance.mixers) sends layers whose mixer is not attention to
        --drop-mixer."""
        parts = ["skipprune", "export", model, output]
        other = {i for i, mixer in enumerate(mixers) if mixer != "attention"}
        for option, spec in self.plan.drop_specs(other).items():
            parts += ["--" + option.replace("_", "-"), spec]
        return " ".join(parts)


def suggest(imp: Importance, target: str, block_params: int = 1, total_params: int | None = None) -> list[Suggestion]:
    """Plans for the same budget: the last layers (Tyukin et al.), the least important sublayers or blocks,
    and for blocks the best contiguous window by angular distance (Gromov et al.)."""
    kind, share = parse_target(target)
    n = len(imp.block_cos)
    if kind in ("attn", "kv"):
        count = max(1, min(n - 1, round(n * share)))
        last = PrunePlan(n, set(range(n - count, n)))
        low = PrunePlan(n, set(sorted(range(n), key=lambda i: -imp.attention_cos[i])[:count]))
        return [
            Suggestion(
                "last-N",
                f"attention of the last {count} layers: the seed paper's recipe (on Llama-2-13B, "
                "33 % cost 1.7 Open-LLM points)",
                last,
            ),
            Suggestion(
                "lowest-importance",
                f"attention of the {count} layers whose attention changes the residual "
                "stream least (highest in/out cosine)",
                low,
            ),
        ]
    total = total_params or n * block_params
    count = max(1, min(n - 1, round(share * total / block_params)))
    low = set(sorted(range(n), key=lambda i: imp.block_influence[i])[:count])
    out = [
        Suggestion(
            "last-N", f"the last {count} blocks", PrunePlan(n, set(range(n - count, n)), set(range(n - count, n)))
        ),
        Suggestion(
            "lowest-importance",
            f"the {count} blocks with the lowest Block Influence (ShortGPT)",
            PrunePlan(n, low, low),
        ),
    ]
    if dists := imp.angular.get(count):
        start = min(range(len(dists)), key=dists.__getitem__)
        window = set(range(start, start + count))
        out.append(
            Suggestion(
                "best-window",
                f"blocks {start}-{start + count - 1}: the {count}-layer window whose ends "
                f"are closest (angular distance {dists[start]:.3f}, Gromov et al.)",
                PrunePlan(n, window, window),
            )
        )
    return out


KEEP = (100, 90, 75, 66)
KINDS = ("attention", "mlp", "blocks")
_SPEC_OPTION = {"attention": "drop_attn", "mlp": "drop_mlp", "blocks": "drop_blocks"}


@dataclass(frozen=True)
class GridPoint:
    kind: str  # "none" for the full model, else one of KINDS
    kept_percent: int
    keep_last_layer: bool
    plan: PrunePlan


def paper_grid(num_layers: int) -> list[GridPoint]:
    """Tyukin et al. 2024, Tables 1-3 and 7: attention, MLP or whole blocks removed from the last layers, keeping
    100 / 90 / 75 / 66 % of them, with and without keeping the final layer; the full model first."""
    points = [GridPoint("none", 100, False, PrunePlan(num_layers))]
    for kind in KINDS:
        for keep in KEEP[1:]:
            for keep_last in (False, True):
                spec = {_SPEC_OPTION[kind]: f"last:{100 - keep}%"}
                plan = PrunePlan.from_specs(num_layers, keep_last_layer=keep_last, **spec)
                points.append(GridPoint(kind, keep, keep_last, plan))
    return points
