"""Bypass sublayers or whole blocks of a loaded stock model in memory, without touching its weights.

The reference semantics of "removed": the sublayer still runs, but what it adds to the residual stream is
zero (a forward hook on the child whose output is added); a removed block still runs, but hands on its input
unchanged. Export verification compares the physically pruned checkpoint against this, so the two are
computed by independent mechanisms. torch is only needed once a hook fires.
"""

from __future__ import annotations

from contextlib import contextmanager

from .family import Family
from .plan import PrunePlan


def _zeroed(module, args, output):
    import torch

    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


def _passed_through(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def bypassed(model, plan: PrunePlan, family: Family):
    """Within the block, `model` (a stock model of `family`) computes as if the plan's sublayers were gone."""
    layers = family.layers(model)
    blocks = set(plan.dropped_blocks)
    handles = [layers[i].register_forward_hook(_passed_through, with_kwargs=True) for i in sorted(blocks)]
    for i in sorted(plan.drop_attention - blocks):  # parallel modules (Falcon-H1's mixer): each one's output
        handles += [getattr(layers[i], out).register_forward_hook(_zeroed) for out in family.at(i).attention_outs]
    for i in sorted(plan.drop_mlp - blocks):
        handles += [getattr(layers[i], out).register_forward_hook(_zeroed) for out in family.at(i).mlp_outs]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
