"""Sublayers or whole blocks of a loaded stock model removed in memory, two ways.

`bypassed`, the reference semantics of "removed": the sublayer still runs, but what it adds to the residual
stream is zero (a forward hook on the child whose output is added); a removed block still runs, but hands on its
input unchanged. `removed_in_place`: what the export computes, with the exported modeling file's own stubs.
Export verification compares the physically pruned checkpoint against the first, so the two are computed by
independent mechanisms. torch is only needed once a hook fires or a stub is made.
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


@contextmanager
def removed_in_place(model, plan: PrunePlan, family: Family):
    """Within the block, `model` computes what the export of `plan` computes. A removed block keeps its slot
    with both sublayers stubbed (the residual passes through unchanged), so per-layer config lists stay valid."""
    from ..remote.modeling_skipprune import remove_sublayer  # imports torch and transformers

    saved = []
    for i, layer in enumerate(family.layers(model)):
        for sublayer, gone in (("attention", plan.drop_attention), ("mlp", plan.drop_mlp)):
            if i in gone:
                names = getattr(family.at(i), sublayer)
                saved += [(layer, n, getattr(layer, n)) for n in names]
                remove_sublayer(layer, list(names), family.at(i).returns_of(sublayer))
    try:
        yield model
    finally:
        for layer, name, module in saved:
            setattr(layer, name, module)
