"""Which children of a decoder block form its token mixer and which its MLP, with the norms only each uses,
learnt from the data flow of one forward pass through a tiny random instance (`derive_sublayers`): a norm whose
output is a sublayer's input is its pre-norm, a norm fed by a sublayer's output its post-norm, a norm feeding
both is shared and stays."""

from __future__ import annotations

import functools

from .discover import decoder_layers
from .refusal import Refusal
from .toy import TOY_LAYERS, tiny_model

_ATTENTION = ("self_attn", "attn", "attention", "self_attention")


# The token mixers a block may have instead of (or beside) attention, by child name.
_MIXERS = {
    **dict.fromkeys(_ATTENTION, "attention"),
    "linear_attn": "linear attention",
    "mamba": "mamba",
    "conv": "conv",
}


_MLP = ("mlp", "feed_forward", "block_sparse_moe", "moe", "ffn", "mixer_mlp", "shared_mlp")


def block_kind(block) -> list[list[str]]:
    """What a decoder block is built of: [child name, class name] of each child that has weights."""
    return [[n, type(c).__name__] for n, c in block.named_children() if any(True for _ in c.parameters())]


@functools.cache
def derive_sublayers(model_type: str, config_json: str) -> dict | Refusal:
    """{'kinds': [split, ...]}, one split per kind of decoder block in a tiny instance of the family (`block_kind`
    under 'kind'), or the refusal saying why its blocks cannot be split into a token mixer and an MLP. A split:
    {'attention': (compute, ..., *norms), 'mlp': (...), 'mixer', 'attention_out', 'mlp_out', 'mlp_in',
    'attention_returns', 'mlp_returns'}. `config_json`: the source's (text) config."""
    import json

    try:
        model = tiny_model(model_type, config_json)
        _, layers = decoder_layers(model, TOY_LAYERS)
    except Exception as e:  # the family's own code refuses a toy size: no derivation, blocks only
        return Refusal.blocks_only(f"a tiny {model_type} could not be built to study its blocks ({type(e).__name__})")
    firsts: dict = {}  # the first block of each kind
    for block in layers:
        firsts.setdefault(json.dumps(block_kind(block)), block)
    kinds = [json.loads(kind) for kind in firsts]
    for kind in kinds:
        names = [n for n, _ in kind]
        # several MLP modules run in parallel in some blocks (Granite-4: experts and a shared MLP)
        if not any(n in _MIXERS for n in names) or not any(n in _MLP for n in names):
            return Refusal.blocks_only(
                "its blocks do not have both a token mixer (attention, linear attention, Mamba) and an MLP"
            )
    flows = _trace(model, [(block, [n for n, _ in kind]) for block, kind in zip(firsts.values(), kinds)])
    if flows is None:
        return Refusal.blocks_only("a forward pass through its blocks could not be traced")
    splits = []
    for kind, flow in zip(kinds, flows):
        split = _split_block(flow, [n for n, _ in kind])
        if isinstance(split, str):
            return Refusal.blocks_only(split)
        splits.append({"kind": kind, **split})
    return {"kinds": splits}


def _split_block(flow: dict, names: list[str]) -> dict | str:
    mixers = [n for n in names if n in _MIXERS]
    mlp = [n for n in names if n in _MLP]
    roles = {"attention": list(mixers), "mlp": list(mlp)}
    computes = {"attention": set(mixers), "mlp": set(mlp)}
    post = {}
    for norm in names:
        if norm in computes["attention"] | computes["mlp"]:
            continue
        feeds = [s for s in roles if computes[s] & flow["consumers"].get(norm, set())]
        fed_by = [s for s in roles if flow["producers"].get(norm) in computes[s]]
        if len(feeds) == 1 and not fed_by:
            roles[feeds[0]].append(norm)
        elif len(fed_by) == 1 and not feeds:
            roles[fed_by[0]].append(norm)
            post[fed_by[0]] = norm
        elif len(feeds) != 2:  # a norm feeding both sublayers is shared and stays; anything else is unknown
            return f"the role of {norm!r} in its blocks is unclear"
    pre_mlp = [n for n in roles["mlp"][len(mlp) :] if n != post.get("mlp")]
    return {
        "mixer": " + ".join(dict.fromkeys(_MIXERS[n] for n in mixers)),
        "attention": roles["attention"],
        "mlp": roles["mlp"],
        "attention_out": post.get("attention", mixers[0]),
        "mlp_out": post.get("mlp", mlp[0]),
        "mlp_in": pre_mlp[0] if pre_mlp else mlp[0],
        "attention_returns": _returns_field([[n, flow["returns"].get(n, 0)] for n in mixers]),
        "mlp_returns": _returns_field([[n, flow["returns"].get(n, 0)] for n in mlp]),
    }


def _returns_field(returns: list) -> int | list:
    """What one compute module returns, or [[module, returns], ...] for several in parallel."""
    return returns[0][1] if len(returns) == 1 else returns


def _trace(model, blocks: list[tuple]) -> list[dict] | None:
    """For each (block, its children): which child's output each child consumes, by tensor identity, and what
    each returns; all blocks in one forward pass."""
    import torch

    outputs: dict[int, tuple[int, str]] = {}
    alive = []  # keeps traced tensors alive, so no id is reused during the pass
    flows = [{"consumers": {}, "producers": {}, "returns": {}} for _ in blocks]

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) and x else x

    def pre(k, name):
        def hook(module, args, kwargs):
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and outputs.get(id(value), (None,))[0] == k:
                    source = outputs[id(value)][1]
                    flows[k]["consumers"].setdefault(source, set()).add(name)
                    flows[k]["producers"].setdefault(name, source)

        return hook

    def post(k, name):
        def hook(module, args, output):
            flows[k]["returns"][name] = _returns(output)
            out = first(output)
            if isinstance(out, torch.Tensor):
                outputs[id(out)] = (k, name)
                alive.append(out)

        return hook

    handles = []
    for k, (block, children) in enumerate(blocks):
        for name in children:
            child = getattr(block, name)
            handles.append(child.register_forward_pre_hook(pre(k, name), with_kwargs=True))
            handles.append(child.register_forward_hook(post(k, name)))
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(3, 200, (1, 6)))
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return flows


def _returns(x) -> int:
    return len(x) if isinstance(x, tuple) else 0
