"""PrunePlan: which source layers lose their attention, their MLP, or both (then the whole block goes).

Indices always name layers of the SOURCE model (0-based). The plan also knows the output numbering: kept
blocks are renumbered 0..n-1 in source order. One plan value flows through export, the config, the
provenance record and the model card.

SPEC grammar (for --drop-attn / --drop-mlp / --drop-blocks):
    last:N       the last N layers
    last:P%      the last round(P% of the layers) layers, halves rounded up; at least 1 when P > 0
    A-B,C,...    0-based indices and inclusive ranges, e.g. 20-31,5
Items combine with commas: `last:2,5` is the last two layers and layer 5.
With keep_last_layer, a `last:` spec takes the layers just before the final one (the final layer is kept,
as in Tyukin et al. 2024, section 3.2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import PlanError

_SPEC_HELP = "use last:N, last:P% or a list of 0-based indices and ranges such as 20-31,5"


def parse_spec(spec: str, num_layers: int, keep_last_layer: bool = False) -> frozenset[int]:
    """Turn a SPEC string into source layer indices, checking every index against num_layers."""
    text = spec.strip().replace(" ", "")
    if not text:
        raise PlanError(f"empty SPEC: {_SPEC_HELP}")
    indices: set[int] = set()
    for part in text.split(","):
        if part.startswith("last:"):
            indices |= _last(part, spec, num_layers, keep_last_layer)
            continue
        if not re.fullmatch(r"\d+(-\d+)?", part):
            raise PlanError(f"malformed SPEC {spec!r}: {_SPEC_HELP}")
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a > b:
            raise PlanError(f"malformed SPEC {spec!r}: range {part} runs backwards; write {b}-{a}")
        if b >= num_layers:
            raise PlanError(
                f"layer {b} in SPEC {spec!r} is out of range: the source has {num_layers} layers (0-{num_layers - 1})"
            )
        indices.update(range(a, b + 1))
    return frozenset(indices)


def _last(part: str, spec: str, num_layers: int, keep_last_layer: bool) -> frozenset[int]:
    m = re.fullmatch(r"last:(\d+(?:\.\d+)?)(%?)", part)
    if not m or (not m.group(2) and "." in m.group(1)):
        raise PlanError(f"malformed SPEC {spec!r}: {_SPEC_HELP}")
    value, percent = m.groups()
    if percent:
        share = float(value)
        if share > 100:
            raise PlanError(f"SPEC {spec!r} asks for more than 100% of the layers; {_SPEC_HELP}")
        count = math.floor(num_layers * share / 100 + 0.5)
        count = max(count, 1) if share > 0 else 0
    else:
        count = int(value)
    end = num_layers - 1 if keep_last_layer else num_layers
    if count > end:
        room = f"{end} layers before the final one" if keep_last_layer else f"{num_layers} layers"
        hint = f"; did you mean {part}%?" if not percent and count <= 100 else ""
        raise PlanError(f"SPEC {spec!r} selects {count} layers but the source has {room}{hint}")
    return frozenset(range(end - count, end))


def format_indices(indices) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (the SPEC list syntax, so it can be pasted back)."""
    out, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            out.append(_run(run))
            run = []
        run.append(i)
    if run:
        out.append(_run(run))
    return ",".join(out)


def layers_phrase(indices) -> str:
    """'layer 3' or 'layers 3-5,7'."""
    return f"layer{'s' * (len(indices) > 1)} {format_indices(indices)}"


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


@dataclass(frozen=True)
class LayerPlan:
    """One kept output layer."""

    output: int
    source: int
    attention: bool
    mlp: bool


@dataclass(frozen=True)
class PrunePlan:
    num_layers: int
    drop_attention: frozenset[int] = field(default_factory=frozenset)
    drop_mlp: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        object.__setattr__(self, "drop_attention", frozenset(self.drop_attention))
        object.__setattr__(self, "drop_mlp", frozenset(self.drop_mlp))

    @classmethod
    def from_specs(
        cls,
        num_layers: int,
        drop_attn: str | None = None,
        drop_mlp: str | None = None,
        drop_blocks: str | None = None,
        keep_last_layer: bool = False,
        drop_mixer: str | None = None,
    ) -> PrunePlan:
        """`drop_mixer`: token mixers of any kind (attention, linear attention, Mamba, ...); the plan does not tell
        them from attention, the family does (skipprune.prune.family)."""

        def parse(spec):
            return parse_spec(spec, num_layers, keep_last_layer) if spec else frozenset()

        specs = (drop_attn, drop_mlp, drop_blocks, drop_mixer)
        if keep_last_layer and not any("last:" in (spec or "") for spec in specs):
            raise PlanError(
                "--keep-last-layer only moves last:N specs off the final layer, and these name layers by index: "
                "leave it out, or write last:N"
            )

        blocks = parse(drop_blocks)
        return cls(num_layers, parse(drop_attn) | parse(drop_mixer) | blocks, parse(drop_mlp) | blocks)

    @classmethod
    def from_dict(cls, data: dict) -> PrunePlan:
        return cls(data["source_num_layers"], data["drop_attention"], data["drop_mlp"])

    def to_dict(self) -> dict:
        """Both numberings, for config.json provenance, the card, and from_dict."""
        return {
            "source_num_layers": self.num_layers,
            "drop_attention": sorted(self.drop_attention),
            "drop_mlp": sorted(self.drop_mlp),
            "drop_blocks": self.dropped_blocks,
            "layers": [vars(layer) for layer in self.layers],
        }

    @property
    def dropped_blocks(self) -> list[int]:
        return sorted(self.drop_attention & self.drop_mlp)

    @property
    def layers(self) -> list[LayerPlan]:
        kept = [i for i in range(self.num_layers) if not (i in self.drop_attention and i in self.drop_mlp)]
        return [LayerPlan(j, i, i not in self.drop_attention, i not in self.drop_mlp) for j, i in enumerate(kept)]

    @property
    def blocks_only(self) -> bool:
        """True when every kept layer is whole: the output can use the stock architecture."""
        return self.drop_attention == self.drop_mlp

    def output_index(self, source: int) -> int | None:
        return next((layer.output for layer in self.layers if layer.source == source), None)

    def drop_specs(self, other_mixers=frozenset()) -> dict[str, str]:
        """The export options that carry this plan out, in command-line order, only those it needs: sublayers
        as --drop-attn (or --drop-mixer for the `other_mixers` layers, whose token mixer is not attention) and
        --drop-mlp, whole blocks as --drop-blocks. {'drop_attn': '1,3', 'drop_blocks': '7', ...}"""
        attn_only, mlp_only = self.drop_attention - self.drop_mlp, self.drop_mlp - self.drop_attention
        other = attn_only & set(other_mixers)
        layers = {
            "drop_attn": attn_only - other,
            "drop_mixer": other,
            "drop_mlp": mlp_only,
            "drop_blocks": self.dropped_blocks,
        }
        return {option: format_indices(chosen) for option, chosen in layers.items() if chosen}

    def validate(self, allow_empty: bool = False) -> PrunePlan:
        if not self.drop_attention and not self.drop_mlp and not allow_empty:
            raise PlanError("empty plan: nothing to remove; pass --drop-attn, --drop-mlp or --drop-blocks")
        bad = [i for i in self.drop_attention | self.drop_mlp if not 0 <= i < self.num_layers]
        if bad:
            raise PlanError(
                f"layer {max(bad)} is out of range: the source has {self.num_layers} layers (0-{self.num_layers - 1})"
            )
        if len(self.dropped_blocks) == self.num_layers:
            raise PlanError(f"the plan removes all {self.num_layers} blocks; keep at least one layer")
        if not any(layer.attention for layer in self.layers):
            raise PlanError(
                "the plan removes attention from every layer, leaving a model that cannot read its context; "
                "keep attention in at least one layer"
            )
        return self

    def describe(self, mixer: str = "attention") -> str:
        """One line per kind of removal, in source numbering; `mixer`: what to call the first sublayer ('token
        mixer' in a hybrid family)."""
        parts = []
        attn_only = self.drop_attention - self.drop_mlp
        mlp_only = self.drop_mlp - self.drop_attention
        if self.dropped_blocks:
            parts.append(f"block{'s' * (len(self.dropped_blocks) > 1)} {format_indices(self.dropped_blocks)}")
        if attn_only:
            parts.append(f"{mixer} of {layers_phrase(attn_only)}")
        if mlp_only:
            parts.append(f"MLP of {layers_phrase(mlp_only)}")
        return f"remove {'; '.join(parts) or 'nothing'} (source numbering; {self.kept_phrase()})"

    def kept_phrase(self) -> str:
        """'9 of 12 layers kept', or 'all 12 layers kept' when no whole block goes."""
        kept = len(self.layers)
        return f"all {kept} layers kept" if kept == self.num_layers else f"{kept} of {self.num_layers} layers kept"
