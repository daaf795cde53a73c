"""Bypass sublayers of a loaded stock model in memory, without touching its weights.

The reference semantics of "removed": the sublayer still runs, but its contribution to the residual stream
is zero (forward hooks). Export verification compares the physically pruned checkpoint against this, so
the two are computed by independent mechanisms. torch is only needed once a hook fires.
"""

from __future__ import annotations

from contextlib import contextmanager

from .families import Family
from .plan import PrunePlan


def _zero_attention(module, args, output):
    import torch

    return (torch.zeros_like(output[0]), *output[1:])


def _zero_mlp(module, args, output):
    import torch

    return torch.zeros_like(output)


@contextmanager
def bypassed(model, plan: PrunePlan, family: Family):
    """Within the block, `model` (a stock *ForCausalLM) computes as if the plan's sublayers were gone."""
    layers = model.model.layers
    handles = [
        getattr(layers[i], family.attention[0]).register_forward_hook(_zero_attention) for i in plan.drop_attention
    ]
    handles += [getattr(layers[i], family.mlp[0]).register_forward_hook(_zero_mlp) for i in plan.drop_mlp]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
