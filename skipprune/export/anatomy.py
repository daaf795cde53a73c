"""What a decoder family looks like, learnt from transformers' own code rather than typed by hand.

- `decoder_layers`: the module list of decoder blocks in a model (any path: `model.layers`, `transformer.h`,
  `model.language_model.layers`, ...), found as the one module list with `num_hidden_layers` entries.
- `shrink`: a tiny configuration of the same family (same options, small sizes), for tracing.
- `derive_sublayers`: which children of a block form the attention sublayer and which the MLP, with the
  norms that only each uses, from the data flow of one forward pass through a tiny random instance: a norm
  whose output is a sublayer's input is its pre-norm, a norm fed by a sublayer's output its post-norm, a
  norm feeding both is shared and stays. The result is checked (see `self_check`) by the same equivalence
  every export must pass: the block with the sublayer's modules stubbed out computes exactly what the stock
  block computes with that sublayer's contribution set to zero, cached generation included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

from .source import LAYER_KEYS, layer_count, text_config

# Sizes small enough for a random model of any family to build in a blink.
TOY_LAYERS = 4
_SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "n_group": 1,
    "topk_group": 1,
    "sliding_window": 8,
    "n_embd": 64,
    "n_head": 4,
    "n_inner": 128,
    "ffn_hidden_size": 128,
}
_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
# Lists whose length may equal the layer count by chance.
NOT_PER_LAYER = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id", "suppress_tokens"}


def keep_layers(config: dict, kept: list[int], n: int) -> dict:
    """`config` with only the layers `kept` (ascending, of n), in a multimodal wrapper's text config: every
    per-layer list sliced, lists of layer numbers (`mlp_only_layers`, `hybrid_layer_ids`) renumbered, the layer
    count and `first_k_dense_replace` / `num_dense_layers` (dense blocks first) counted again."""
    if isinstance(config.get("text_config"), dict):
        return {**config, "text_config": keep_layers(config["text_config"], kept, n)}
    out = dict(config)
    for key, value in config.items():
        if not isinstance(value, list) or key in NOT_PER_LAYER:
            continue
        if len(value) == n:
            out[key] = [value[i] for i in kept]
        elif ("layer" in key or "ids" in key) and value and all(type(i) is int and 0 <= i < n for i in value):
            out[key] = [kept.index(i) for i in value if i in kept]
    for key in LAYER_KEYS:
        if isinstance(out.get(key), int):
            out[key] = len(kept)
    for key in ("first_k_dense_replace", "num_dense_layers"):  # the first k layers dense, the rest MoE
        if isinstance(config.get(key), int):
            out[key] = sum(1 for i in kept if i < config[key])
    return out


def _toy_layers(config: dict, n: int, layers: int) -> list[int]:
    """Which of the n layers a toy keeps: where a per-layer pattern names kinds of layer (full and linear
    attention, hybrid, ...), the first layer of each kind, then the next one of each kind in turn (so that
    removing one layer's attention leaves another), then the first layers; a hybrid toy stays hybrid."""
    of_kind: dict = {}
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n and key not in NOT_PER_LAYER:
            for i, kind in enumerate(value):
                if isinstance(kind, str):
                    of_kind.setdefault((key, kind), []).append(i)
    keep: list[int] = []
    for turn in range(2):
        for indices in of_kind.values():
            if len(indices) > turn and indices[turn] not in keep and len(keep) < layers:
                keep.append(indices[turn])
    return sorted(keep + [i for i in range(n) if i not in keep][: layers - len(keep)])


def shrink(config: dict, layers: int = TOY_LAYERS) -> dict:
    """The same family and options at toy size: sizes from a small table where the config has them, `layers`
    layers kept (see _toy_layers), token ids kept inside the small vocabulary."""
    out = {k: v for k, v in config.items() if v is not None and k not in ("transformers_version", "auto_map")}
    for key, value in out.items():  # the parts of a multimodal wrapper: language model, vision tower, ...
        if isinstance(value, dict) and key.endswith("_config") and "model_type" in value:
            out[key] = shrink(value, layers if key == "text_config" else 1)
    if "text_config" in out:
        return out
    if n := layer_count(out):
        out = keep_layers(out, _toy_layers(out, n, layers), n)
    for key in LAYER_KEYS:  # `layers` layers even where the default has fewer (bloom: 2)
        if isinstance(out.get(key), int):
            out[key] = layers
    for key, value in out.items():
        if key in _SMALL and isinstance(value, int) and not isinstance(value, bool):
            out[key] = _SMALL[key]
    if isinstance(out.get("attn_layer_period"), int) and isinstance(out.get("expert_layer_period"), int):
        # Jamba places attention and experts by period and offset: attention in layers 0 and 2, experts in layer 3,
        # so the toy has attention, Mamba and MoE blocks, and one attention layer left when another loses its own
        out.update(attn_layer_period=2, attn_layer_offset=0, expert_layer_period=4, expert_layer_offset=3)
    if "attn_layer_indices" in config and not out.get("attn_layer_indices"):
        # bamba: no attention by default; the toy gets both kinds, and two attention layers so one can lose its own
        out["attn_layer_indices"] = [layers // 2, layers - 1]
    if config.get("num_key_value_heads") == config.get("num_attention_heads") and "num_key_value_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]  # no grouped queries in the family: keep it so
    if all(isinstance(out.get(k), int) for k in ("mamba_expand", "mamba_n_heads", "mamba_d_head")):
        # Mamba-2 mixers (bamba, granite-4 hybrid) check that heads x head size = expand x hidden size
        out["mamba_d_head"] = 16
        out["mamba_n_heads"] = out["mamba_expand"] * out["hidden_size"] // 16
        if isinstance(out.get("mamba_d_ssm"), int):  # Falcon-H1 states the mixer's width too
            out["mamba_d_ssm"] = out["mamba_expand"] * out["hidden_size"]
    if all(isinstance(out.get(k), int) for k in ("mamba_expand", "n_mamba_heads", "mamba_headdim")):
        out["mamba_headdim"] = out["mamba_expand"] * out["hidden_size"] // out["n_mamba_heads"]  # zamba2: derived
    if isinstance(out.get("attention_hidden_size"), int):  # zamba's shared attention reads the concatenation of
        out["attention_hidden_size"] = 2 * out["hidden_size"]  # the residual stream and the embeddings
    if set(out.get("layer_types") or ()) == {"linear_attention"}:
        # Granite-4 hybrid: every layer Mamba-2 by default, attention in some layers of real models; transformers'
        # cache counts tokens in attention layers, so the toy gets two (one left when the other loses its own)
        out["layer_types"] = ["linear_attention"] * (layers - 2) + ["full_attention"] * 2
    if "conv_L_cache" in out and len(set(out.get("layer_types") or ())) < 2:
        # LFM2: models mix short convolutions and attention, defaults may have only one kind (or none spelt out)
        out["layer_types"] = ["conv", "full_attention"] * (layers // 2) + ["conv"] * (layers % 2)
        if "full_attn_idxs" in out:
            out["full_attn_idxs"] = [i for i, kind in enumerate(out["layer_types"]) if kind == "full_attention"]
    if isinstance(out.get("num_kv_shared_layers"), int) and isinstance(out.get("layer_types"), list):
        # gemma3n: the last layers reuse the cache of the last earlier layer of their type; keep one such layer
        kinds = out["layer_types"]
        out["num_kv_shared_layers"] = 1 if set(kinds[:-1]) == set(kinds) else 0
    if isinstance(out.get("qk_rope_head_dim"), int):  # multi-head latent attention derives its head sizes
        out["head_dim"] = out["qk_rope_head_dim"]
        out.pop("qk_head_dim", None)
    vocab = out.get("vocab_size", 256)
    for key in _TOKEN_KEYS:
        ids = out.get(key)
        if isinstance(ids, int) and ids >= vocab:
            out[key] = vocab - 1
        elif isinstance(ids, list):
            out[key] = [i if i < vocab else vocab - 1 for i in ids]
    return out


class NoDecoderBlocks(Exception):
    """The model has no module list with one entry per layer."""


def decoder_layers(model, count: int) -> tuple[str, object]:
    """(path, module list) of the decoder blocks: the module list with `count` entries whose entries are
    blocks (modules with parameters), the outermost one when several qualify; failing that, one where some
    entries are (blocks emptied in place, as sweep does)."""
    import torch

    lists = [
        (name, module, [any(True for _ in block.parameters()) for block in module])
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    found = [(name, m) for name, m, weighted in lists if all(weighted)] or [
        (name, m) for name, m, weighted in lists if any(weighted)
    ]
    if not found:
        raise NoDecoderBlocks(f"no list of {count} decoder blocks")
    # a vision or audio encoder may have as many layers as the language model: never pick it
    text = [nm for nm in found if not any(w in nm[0] for w in ("vision", "visual", "audio", "image", "encoder"))]
    return min(text or found, key=lambda nm: nm[0].count("."))


def blocks_of(model):
    """(path, module list) of a loaded (or meta) causal LM's decoder blocks: where a skipprune export's config
    says they are (a tampered export may hold a block without weights), else found as decoder_layers does."""
    path = getattr(model.config, "decoder_layers", None)
    if isinstance(path, str):
        return path, model.get_submodule(path)
    return decoder_layers(model, model.config.get_text_config().num_hidden_layers)


@functools.lru_cache(maxsize=1)
def tiny_model(model_type: str, config_json: str, layers: int = TOY_LAYERS):
    """A random instance of the family at toy size (`shrink`), seeded, in eval mode; the last one is kept for
    the next study of the same family (callers copy it before changing it)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in shrink(json.loads(config_json), layers).items() if k != "model_type"}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()


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
def derive_sublayers(model_type: str, config_json: str) -> dict | str:
    """{'kinds': [split, ...]}, one split per kind of decoder block in a tiny instance of the family (`block_kind`
    under 'kind'), or the reason why its blocks cannot be split into a token mixer and an MLP. A split:
    {'attention': (compute, ..., *norms), 'mlp': (...), 'mixer', 'attention_out', 'mlp_out', 'mlp_in',
    'attention_returns', 'mlp_returns'}. `config_json`: the source's (text) config."""
    import json

    try:
        model = tiny_model(model_type, config_json)
        _, layers = decoder_layers(model, TOY_LAYERS)
    except Exception as e:  # the family's own code refuses a toy size: no derivation, blocks only
        return f"a tiny {model_type} could not be built to study its blocks ({type(e).__name__})"
    firsts: dict = {}  # the first block of each kind
    for block in layers:
        firsts.setdefault(json.dumps(block_kind(block)), block)
    kinds = [json.loads(kind) for kind in firsts]
    for kind in kinds:
        names = [n for n, _ in kind]
        # several MLP modules run in parallel in some blocks (Granite-4: experts and a shared MLP)
        if not any(n in _MIXERS for n in names) or not any(n in _MLP for n in names):
            return "its blocks do not have both a token mixer (attention, linear attention, Mamba) and an MLP"
    flows = _trace(model, [(block, [n for n, _ in kind]) for block, kind in zip(firsts.values(), kinds)])
    if flows is None:
        return "a forward pass through its blocks could not be traced"
    splits = []
    for kind, flow in zip(kinds, flows):
        split = _split_block(flow, [n for n, _ in kind])
        if isinstance(split, str):
            return split
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


@functools.cache
def _family(config_json: str, split: bool = True):
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..prune.families import Family

    config = json.loads(config_json)
    model_type = config.get("model_type")
    text = text_config(config)
    count = layer_count(text)
    stock = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(stock)
    path, blocks = decoder_layers(model, count)
    full = model.state_dict()
    state = {k: v for k, v in full.items() if k.startswith(f"{path}.0.")}
    prefixes = {re.match(r"(.*\.)0\.", name)[1] for name in checkpoint_names(model, state)}
    where = {"layers_path": path, "weights_prefix": prefixes.pop() if len(prefixes) == 1 else ""}
    text_type = text.get("model_type", model_type)
    rest = {k: v for k, v in full.items() if not k.startswith(f"{path}.")}
    where["renamed"] = text is not config or set(checkpoint_names(model, rest)) != set(rest)
    real = [json.dumps(block_kind(b)) for b in blocks]
    where["alike"] = len(set(real)) == 1
    if not split:
        return Family(model_type, **where, no_sublayers="not studied (only whole blocks were asked for)")
    derived = _split(text_type, json.dumps(text, sort_keys=True))
    if "kinds" not in derived:
        return Family(model_type, **where, **derived)
    studied = {json.dumps(k["kind"]): {f: v for f, v in k.items() if f != "kind"} for k in derived["kinds"]}
    shared = {k: v for k, v in derived.items() if k != "kinds"}  # no_attention
    if unseen := [i for i, kind in enumerate(real) if kind not in studied]:
        from ..prune.plan import layers_phrase

        why = f"its {layers_phrase(unseen)} are built unlike every block of the tiny {text_type} studied"
        return Family(model_type, **where, no_sublayers=why)
    order = list(dict.fromkeys(real))
    kinds = []
    for kind in order:
        i = real.index(kind)  # the first layer of this kind: its weight names
        fields = dict(studied[kind])
        for sublayer in ("attention", "mlp"):
            children = set()
            for child in fields[sublayer]:
                mine = {k: v for k, v in full.items() if k.startswith(f"{path}.{i}.{child}.")}
                children |= {name.split(f".{i}.", 1)[1].split(".")[0] for name in checkpoint_names(model, mine)}
            fields[f"{sublayer}_weights"] = sorted(children)
        kinds.append(Family.from_fields(model_type, {**shared, **fields}, **where))
    if len(kinds) == 1:
        return kinds[0]
    # the top-level split (what code that does not look per layer sees) is the first attention block's
    main = next((k for k in kinds if k.mixer == "attention"), kinds[0])
    return dataclasses.replace(main, kinds=tuple(kinds), layer_kind=tuple(order.index(k) for k in real))


def _split(text_type: str, text_json: str) -> dict:
    """derive_sublayers + self_check for a language model's config, remembered on disk (per skipprune code,
    transformers version and family options): the fields of Family they determine."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import transformers

    from .remote import REMOTE_DIR

    code = Path(__file__).read_bytes() + (REMOTE_DIR / "modeling_skipprune.py").read_bytes()
    shrunk = json.dumps(shrink(json.loads(text_json)), sort_keys=True)
    key = hashlib.sha256(code + transformers.__version__.encode() + text_type.encode() + shrunk.encode()).hexdigest()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skipprune" / "families"
    cached = root / f"{key}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    with quiet():
        derived = derive_sublayers(text_type, text_json)
        why = None if isinstance(derived, str) else self_check(text_type, text_json, derived["kinds"])
    if isinstance(derived, str):
        fields = {"no_sublayers": derived}
    else:
        fields = dict(derived)
        if why and why.startswith("attention:"):
            fields["no_attention"] = why.split(":", 1)[1].strip()
        elif why:
            fields = {"no_sublayers": why}
    try:  # a cache: losing it (read-only home, full disk) only costs the study again
        root.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fields), encoding="utf-8")
        tmp.replace(cached)
    except OSError:
        pass
    return fields


@contextlib.contextmanager
def quiet():
    """transformers' warnings off while a tiny model is studied: they would be about the toy (a missing fast
    kernel for linear attention, ...), printed before the command's own first line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def self_check(model_type: str, config_json: str, kinds: list[dict]) -> str | None:
    """None when the derived split (`kinds`, derive_sublayers') is exact on a tiny random instance: stubbing a
    sublayer's modules out (what an export's modeling file does) gives bit for bit the logits of the stock model
    with that sublayer's contribution zeroed (a padded batch), and cached greedy decoding equals uncached with
    mixer-free layers holding no cache. Every kind of block loses its mixer and its MLP once. Otherwise the
    reason; 'attention: ...' when only the removal of token mixers fails."""
    import json

    from ..prune.families import Family
    from ..prune.plan import PrunePlan

    ref = tiny_model(model_type, config_json)
    path, layers = decoder_layers(ref, TOY_LAYERS)
    names = [json.dumps(k["kind"]) for k in kinds]
    toy_kinds = [names.index(json.dumps(block_kind(b))) for b in layers]
    splits = [Family.from_fields(model_type, {k: v for k, v in kind.items() if k != "kind"}) for kind in kinds]
    tiny = Family(model_type, kinds=tuple(splits), layer_kind=tuple(toy_kinds)).with_layers_path(path)
    if len(kinds) == 1:
        plans = [PrunePlan(TOY_LAYERS, {0, 3}, {2, 3})]
    else:  # each kind's first layer loses its mixer in one plan, its MLP in another, where attention is left
        firsts = {toy_kinds.index(k) for k in range(len(kinds))}
        attends = {i for i in range(TOY_LAYERS) if "attention" in tiny.at(i).mixer.split(" + ")}
        if attends - firsts:
            plans = [PrunePlan(TOY_LAYERS, firsts, set()), PrunePlan(TOY_LAYERS, set(), firsts)]
        else:
            plans = [PrunePlan(TOY_LAYERS, {f}, {(f + 1) % TOY_LAYERS}) for f in sorted(firsts)]
    cache_failures = []
    for plan in plans:
        if why := _check_plan(ref, tiny, plan):
            if not why.startswith("attention:"):
                return why
            cache_failures.append(why)
    # A cache that fails for some positions only is a matter of plans (checked at export), not of the family.
    alone = (
        PrunePlan(TOY_LAYERS, {i}, set()) for i in range(TOY_LAYERS) if "attention" in tiny.at(i).mixer.split(" + ")
    )
    if cache_failures and not any(_check_plan(ref, tiny, plan) is None for plan in alone):
        return cache_failures[0]
    return None


def _check_plan(ref, tiny, plan) -> str | None:
    import copy

    import torch

    from ..prune.bypass import bypassed
    from .remote.modeling_skipprune import remove_sublayer

    pruned = copy.deepcopy(ref)
    layers = tiny.layers(pruned)
    for i in sorted(plan.drop_attention):
        remove_sublayer(layers[i], list(tiny.at(i).attention), tiny.at(i).returns_of("attention"))
    for i in sorted(plan.drop_mlp):
        remove_sublayer(layers[i], list(tiny.at(i).mlp), tiny.at(i).returns_of("mlp"))
    vocab = int(getattr(ref.config.get_text_config(decoder=True), "vocab_size", 256))
    ids = torch.randint(3, min(vocab, 200), (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    try:
        with torch.no_grad(), bypassed(ref, plan, tiny):
            want = ref(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad():
            got = pruned(input_ids=ids, attention_mask=mask).logits
    except Exception as e:
        return f"its blocks do not run with a sublayer stubbed out ({type(e).__name__})"
    if not torch.equal(got[mask.bool()], want[mask.bool()]):
        return "stubbing its sublayers out does not reproduce the bypassed block exactly"
    if not plan.drop_attention:  # only MLPs gone: the cache is not involved
        return None
    mixers = [None if i in plan.drop_attention else tiny.at(i).mixer_children for i in range(len(layers))]
    return cached_decoding_differs(pruned, layers, mixers, ids[:1, :6])


def cached_decoding_differs(pruned, layers, mixers: list, ids) -> str | None:
    """None when greedy decoding of `pruned` (a stock model, some of whose `layers` lost their token mixer:
    `mixers[i]` names layer i's mixer modules, None where it has none) with the exported model's cache
    (`KeptMixerCache`: slots for the kept mixers only) equals decoding without a cache; else the reason,
    starting 'attention:'."""
    import torch

    from ..errors import describe
    from .remote.modeling_skipprune import KeptMixerCache, cache_argument

    modules = [None if names is None else [getattr(b, n) for n in names] for b, names in zip(layers, mixers)]
    slots = KeptMixerCache(pruned.config, modules)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    try:
        with torch.no_grad():
            uncached = pruned.generate(ids, use_cache=False, **kw)
            cached = pruned.generate(ids, use_cache=True, **{cache_argument(pruned.forward): slots.new()}, **kw)
    except Exception as e:
        return f"attention: its cache fails with mixer-free layers ({describe(e)[:160]})"
    if not torch.equal(cached, uncached):
        return "attention: cached decoding differs from uncached with mixer-free layers"
    return None


def check_cached_decoding(source_config: dict, family, plan) -> None:
    """Refuse, in one line, a plan whose export would decode with its cache otherwise than without one: its
    pattern of layers without a token mixer, on a toy of the family with as many layers as the export."""
    import json

    from ..errors import PlanError
    from ..prune.plan import layers_phrase

    layers = plan.layers
    if all(layer.attention for layer in layers):
        return
    text = text_config(source_config)
    output = keep_layers(text, [layer.source for layer in layers], plan.num_layers)
    model_type = text.get("model_type", source_config.get("model_type"))
    splits = tuple((family.at(layer.source), layer.attention) for layer in layers)
    why = _decodes(model_type, json.dumps(output, sort_keys=True), splits)
    if why:
        gone = layers_phrase([layer.source for layer in layers if not layer.attention])
        noun, reason = family.mixer_noun, why.split(":", 1)[1].strip()
        raise PlanError(
            f"{family.model_type}: without the {noun} of {gone}, {reason} (transformers {_transformers_version()}); "
            f"keep the {noun} of other layers, or remove whole blocks"
        )


@functools.lru_cache(maxsize=8)
def _decodes(model_type: str, config_json: str, splits: tuple) -> str | None:
    import copy

    import torch

    from .remote.modeling_skipprune import remove_sublayer

    try:
        with quiet():
            pruned = copy.deepcopy(tiny_model(model_type, config_json, len(splits)))
        _, layers = decoder_layers(pruned, len(splits))
    except Exception:  # no toy of this config: the export's own checks stand alone
        return None
    for block, (split, kept) in zip(layers, splits):
        if not kept:
            remove_sublayer(block, list(split.attention), split.returns_of("attention"))
    mixers = [split.mixer_children if kept else None for split, kept in splits]
    vocab = int(getattr(pruned.config.get_text_config(decoder=True), "vocab_size", 256))
    ids = torch.randint(3, min(vocab, 200), (1, 6), generator=torch.Generator().manual_seed(0))
    with quiet():
        return cached_decoding_differs(pruned, layers, mixers, ids)


def _transformers_version() -> str:
    from transformers import __version__

    return __version__


def check_config(config: dict) -> None:
    """Refuse, before any weight is read, a config that is not a decoder-only causal LM transformers builds."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..errors import SourceError

    model_type = config.get("model_type")
    if not model_type:
        raise SourceError("config.json has no model_type; it is not a transformers model config")
    if model_type not in CONFIG_MAPPING:
        from transformers import __version__

        if near := close_model_type(model_type):
            raise SourceError(
                f"transformers {__version__} does not know model_type {model_type!r}: did you mean {near!r}?"
            )
        raise SourceError(
            f"transformers {__version__} does not know model_type {model_type!r}: upgrade transformers (a model "
            "whose code lives only in its repository is not supported)"
        )
    default = CONFIG_MAPPING[model_type]()
    if config.get("is_encoder_decoder") or getattr(default, "is_encoder_decoder", False):
        raise SourceError(f"{model_type} is an encoder-decoder model: skipprune prunes decoder-only causal LMs")
    encoder = getattr(default, "is_decoder", None) is False and hasattr(default, "add_cross_attention")
    if encoder and not config.get("is_decoder"):  # bert, roberta, ...: encoders that can be run as decoders
        raise SourceError(
            f"{model_type} is an encoder model (its causal-LM head needs is_decoder: true in config.json): skipprune "
            "prunes decoder-only causal LMs"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SourceError(
            f"{model_type} has no causal-LM head in transformers: skipprune prunes decoder-only causal LMs"
        )


def family_of(config: dict, split: bool = True):
    """The Family of a source config (cached per config): where its blocks are, and (with `split`, which takes
    a study of a tiny instance the first time a family is seen) how they split into attention and MLP."""
    import json

    from ..errors import SkippruneError, SourceError, describe

    check_config(config)
    text = text_config(config)
    if layer_count(text) is None:
        raise SourceError(f"{config['model_type']}: config.json says nothing about its number of layers")
    try:
        return _family(json.dumps(config, sort_keys=True), split)
    except NoDecoderBlocks:
        raise SourceError(
            f"{config['model_type']}: no list of {layer_count(text)} decoder blocks found in the model transformers "
            "builds from this config; it cannot be cut by blocks"
        ) from None
    except SkippruneError:
        raise
    except Exception as e:  # the family's own code refuses this config
        raise SourceError(
            f"building the {config['model_type']} model that config.json describes failed ({describe(e)}); "
            "fix config.json or restore it from the original model"
        ) from None


def renumbering_breaks(config: dict, kept_config: dict, kept: list[int], alike: bool = False):
    """What the output's config (`kept_config`, the source's with only the `kept` layers) would build with other
    weights than the source holds: (kept source layers, weights outside the blocks). A family that derives what a
    block holds from its position (Jamba's attention in every 8th layer from the 4th, Zamba2's adapter per
    hybrid layer) cannot always renumber its blocks; weights sized by the layer count (Gemma 3n's per-layer
    embeddings) do not follow a cut. `alike`: the source's blocks are all built alike, so only the second can
    happen. Raises ValueError (the family's own) when `kept_config` does not build at all."""
    import json

    before, around = _built(json.dumps(config, sort_keys=True))
    after, kept_around = _built(json.dumps(kept_config, sort_keys=True))
    resized = sorted(n for n, shape in around.items() if kept_around.get(n, shape) != shape)
    broken = [] if alike else [i for j, i in enumerate(kept) if before[i] != after[j]]
    return broken, resized


@functools.lru_cache(maxsize=8)
def _built(config_json: str) -> tuple[list[str], dict]:
    """Per decoder block, its weights' names and shapes; the shapes of the weights outside the blocks."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(config_json)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    path, blocks = decoder_layers(model, layer_count(text_config(config)))
    outside = {n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith(path + ".")}
    return [json.dumps(sorted((n, list(p.shape)) for n, p in b.named_parameters())) for b in blocks], outside


def blocks_fixed(resized: list[str]) -> str:
    """Why whole blocks cannot go, given the weights outside them that are sized by the layer count."""
    verb = "is" if len(resized) == 1 else "are"
    return (
        f"{', '.join(resized[:2])} outside the decoder blocks {verb} sized by the number of layers (per-layer "
        "inputs), which skipprune does not cut, so whole blocks cannot be removed"
    )


def checkpoint_names(model, state: dict) -> dict:
    """`state` (model names) under the names a checkpoint of it holds: transformers renames and fuses some
    weights on load (MoE experts, old multimodal prefixes) and reverts that when it saves."""
    try:
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(model, state)
    except Exception:  # nothing to revert, or an older transformers: the names are the model's
        return state


def close_model_type(model_type: str) -> str | None:
    """The causal-LM model type transformers knows that `model_type` most likely misspells, if any."""
    import difflib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    near = difflib.get_close_matches(model_type, list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), n=1, cutoff=0.75)
    return near[0] if near else None


def support(model_type: str) -> dict[str, str]:
    """What skipprune can remove from `model_type` with the installed transformers, studied on a tiny instance of
    the family's default config: 'yes' or the reason, per capability (blocks, attention, mlp, serving), and
    `mixers`, the kinds of token mixer its blocks have where they split ('attention', 'linear attention', ...)."""
    from transformers import AutoConfig

    from ..errors import SkippruneError
    from .nas import NAS_FAMILIES

    try:
        check_config({"model_type": model_type})
        config = shrink(AutoConfig.for_model(model_type).to_dict())
        config["model_type"] = model_type
        family = family_of(config)
    except SkippruneError as e:
        return {**dict.fromkeys(("blocks", "attention", "mlp", "serving"), str(e)), "mixers": ""}
    except Exception as e:  # the family's own code refuses even its default config at toy size
        why = f"a tiny {model_type} could not be built ({type(e).__name__})"
        return {**dict.fromkeys(("blocks", "attention", "mlp", "serving"), why), "mixers": ""}
    sub = family.no_sublayers
    kept = [i for i in range(TOY_LAYERS) if i != 1]
    try:
        _, resized = renumbering_breaks(config, keep_layers(config, kept, TOY_LAYERS), kept)
        blocks = blocks_fixed(resized) if resized else "yes"
    except Exception as e:  # the family's config class refuses a toy without block 1
        blocks = f"its config does not build without a block ({type(e).__name__})"
    mixers = [k.mixer for k in family.kinds or (family,)]
    return {
        "blocks": blocks,
        "attention": sub or family.no_attention or "yes",
        "mlp": sub or "yes",
        "serving": "yes"
        if model_type in NAS_FAMILIES
        else f"--format nemotron-nas takes {' and '.join(NAS_FAMILIES)} sources",
        # the kinds of token mixer --drop-mixer removes (--drop-attn: attention only)
        "mixers": "" if sub else ", ".join(dict.fromkeys(mixers)),
    }


@functools.lru_cache(maxsize=8)
def _model_names(config_json: str) -> dict[str, str]:
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads(config_json)))
    names = {}
    for name, tensor in model.state_dict().items():
        stored = list(checkpoint_names(model, {name: tensor}))
        if len(stored) == 1:
            names[stored[0]] = name
    return names


def model_names(config: dict) -> dict[str, str]:
    """checkpoint name -> name in the loaded model, for every weight that transformers only renames on load
    (a multimodal wrapper's `language_model.model.*` -> `model.language_model.*`, ...)."""
    import json

    return _model_names(json.dumps(config, sort_keys=True))
