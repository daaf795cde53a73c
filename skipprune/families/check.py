"""The study's proof that a split is exact: on a tiny random instance, stubbing a sublayer's modules out (what an
export's modeling file does) gives bit for bit the stock model with that sublayer's contribution zeroed, and
greedy decoding with the export's cache (slots for the kept mixers only) equals decoding without one. The
same cache check runs at export time for the plan's own pattern of layers, on a toy with as many layers."""

from __future__ import annotations

import functools
import json

from .config import keep_layers, text_config
from .derive import block_kind
from .discover import decoder_layers
from .refusal import Refusal
from .toy import TOY_LAYERS, quiet, tiny_model


def self_check(model_type: str, config_json: str, kinds: list[dict]) -> Refusal | None:
    """None when the derived split (`kinds`, derive_sublayers') is exact on a tiny random instance: stubbing a
    sublayer's modules out (what an export's modeling file does) gives bit for bit the logits of the stock model
    with that sublayer's contribution zeroed (a padded batch), and cached greedy decoding equals uncached with
    mixer-free layers holding no cache. Every kind of block loses its mixer and its MLP once. Otherwise the
    refusal: of attention alone when only the cache fails, and only when it fails wherever a mixer goes (a
    failure at some positions only is a matter of plans, checked at export)."""

    from ..prune.family import Family
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
        if refusal := _check_plan(ref, tiny, plan):
            if refusal.what != "attention":
                return refusal
            cache_failures.append(refusal)
    # A cache that fails for some positions only is a matter of plans (checked at export), not of the family.
    alone = (
        PrunePlan(TOY_LAYERS, {i}, set()) for i in range(TOY_LAYERS) if "attention" in tiny.at(i).mixer.split(" + ")
    )
    if cache_failures and not any(_check_plan(ref, tiny, plan) is None for plan in alone):
        return cache_failures[0]
    return None


def _check_plan(ref, tiny, plan) -> Refusal | None:
    import copy

    import torch

    from ..prune.bypass import bypassed
    from ..remote.modeling_skipprune import remove_sublayer

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
        return Refusal.blocks_only(f"its blocks do not run with a sublayer stubbed out ({type(e).__name__})")
    if not torch.equal(got[mask.bool()], want[mask.bool()]):
        return Refusal.blocks_only("stubbing its sublayers out does not reproduce the bypassed block exactly")
    if not plan.drop_attention:  # only MLPs gone: the cache is not involved
        return None
    mixers = [None if i in plan.drop_attention else tiny.at(i).mixer_children for i in range(len(layers))]
    return cached_decoding_differs(pruned, layers, mixers, ids[:1, :6])


def cached_decoding_differs(pruned, layers, mixers: list, ids) -> Refusal | None:
    """None when greedy decoding of `pruned` (a stock model, some of whose `layers` lost their token mixer:
    `mixers[i]` names layer i's mixer modules, None where it has none) with the exported model's cache
    (`KeptMixerCache`: slots for the kept mixers only) equals decoding without a cache; else the refusal."""
    import torch

    from ..errors import describe
    from ..remote.modeling_skipprune import KeptMixerCache, cache_argument

    modules = [None if names is None else [getattr(b, n) for n in names] for b, names in zip(layers, mixers)]
    slots = KeptMixerCache(pruned.config, modules)
    arg = cache_argument(pruned.forward)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    try:
        with torch.no_grad():
            uncached = pruned.generate(ids, use_cache=False, **kw)
            cached = pruned.generate(ids, use_cache=True, **{arg: slots.new()}, **kw)
            # the positions the model reads from its cache after a prompt and two steps: a slot that counts no
            # tokens restarts them, which a random toy's greedy tokens may not show
            cache = slots.new()
            for part in (ids[:, :-2], ids[:, -2:-1], ids[:, -1:]):
                pruned(input_ids=part, use_cache=True, **{arg: cache})
            seen = int(cache.get_seq_length())
    except Exception as e:
        return Refusal.attention(f"its cache fails with mixer-free layers ({describe(e)[:160]})")
    if not torch.equal(cached, uncached) or seen != ids.shape[1]:
        return Refusal.attention("cached decoding differs from uncached with mixer-free layers")
    return None


def check_cached_decoding(source_config: dict, family, plan) -> None:
    """Refuse, in one line, a plan whose export would decode with its cache otherwise than without one: its
    pattern of layers without a token mixer, on a toy of the family with as many layers as the export."""
    from ..errors import PlanError
    from ..prune.plan import layers_phrase

    layers = plan.layers
    if all(layer.attention for layer in layers):
        return
    text = text_config(source_config)
    output = keep_layers(text, [layer.source for layer in layers], plan.num_layers)
    model_type = text.get("model_type", source_config.get("model_type"))
    splits = tuple((family.at(layer.source), layer.attention) for layer in layers)
    refusal = _decodes(model_type, json.dumps(output, sort_keys=True), splits)
    if refusal:
        gone = layers_phrase([layer.source for layer in layers if not layer.attention])
        noun, reason = family.mixer_noun, refusal.why
        raise PlanError(
            f"{family.model_type}: without the {noun} of {gone}, {reason} (transformers {_transformers_version()}); "
            f"keep the {noun} of other layers, or remove whole blocks"
        )


@functools.lru_cache(maxsize=8)
def _decodes(model_type: str, config_json: str, splits: tuple) -> Refusal | None:
    import copy

    import torch

    from ..remote.modeling_skipprune import remove_sublayer

    mixers = [split.mixer_children if kept else None for split, kept in splits]
    try:
        with quiet():
            pruned = copy.deepcopy(tiny_model(model_type, config_json, len(splits)))
        _, layers = decoder_layers(pruned, len(splits))
        for block, (split, kept), names in zip(layers, splits, mixers):
            if not kept:
                remove_sublayer(block, list(split.attention), split.returns_of("attention"))
            for name in names or ():
                getattr(block, name)
    except Exception:  # no toy built like the export (a toy quirk moved its kinds of block): its other checks stand
        return None
    vocab = int(getattr(pruned.config.get_text_config(decoder=True), "vocab_size", 256))
    ids = torch.randint(3, min(vocab, 200), (1, 6), generator=torch.Generator().manual_seed(0))
    with quiet():
        return cached_decoding_differs(pruned, layers, mixers, ids)


def _transformers_version() -> str:
    from transformers import __version__

    return __version__
