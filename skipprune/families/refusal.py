"""What the family study refuses, as a value: what cannot go, at which scope, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """`what`: 'sublayers' (only whole blocks can go) or 'attention' (token mixers cannot go on their own, MLPs
    can); `scope`: 'family' (every plan) or 'plan' (this plan's pattern of layers only); `why`: the reason."""

    what: str
    why: str
    scope: str = "family"

    @classmethod
    def blocks_only(cls, why: str) -> Refusal:
        return cls("sublayers", why)

    @classmethod
    def attention(cls, why: str, scope: str = "family") -> Refusal:
        return cls("attention", why, scope)
