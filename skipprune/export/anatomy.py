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
    """`config` (a model's own, not a wrapper's) with only the layers `kept` (ascending, of n): every per-layer
    list sliced, lists of layer numbers (`mlp_only_layers`, `hybrid_layer_ids`) renumbered, the layer count and
    `first_k_dense_replace` (dense blocks first) counted again."""
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
    if isinstance(config.get("first_k_dense_replace"), int):
        out["first_k_dense_replace"] = sum(1 for i in kept if i < config["first_k_dense_replace"])
    return out


def _toy_layers(config: dict, n: int, layers: int) -> list[int]:
    """Which of the n layers a toy keeps: the first `layers`, except that every kind of layer a per-layer pattern
    names (full and linear attention, hybrid, ...) keeps its first one, so a hybrid toy stays hybrid."""
    firsts: dict = {}
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n and key not in NOT_PER_LAYER:
            for i, kind in enumerate(value):
                if isinstance(kind, str):
                    firsts.setdefault((key, kind), i)
    keep = sorted(set(list(firsts.values())[:layers]))
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
    if "attn_layer_indices" in config and not out.get("attn_layer_indices"):
        out["attn_layer_indices"] = [layers // 2]  # bamba: no attention by default; the toy gets both kinds
    if config.get("num_key_value_heads") == config.get("num_attention_heads") and "num_key_value_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]  # no grouped queries in the family: keep it so
    if all(isinstance(out.get(k), int) for k in ("mamba_expand", "mamba_n_heads", "mamba_d_head")):
        # Mamba-2 mixers (bamba, granite-4 hybrid) check that heads x head size = expand x hidden size
        out["mamba_d_head"] = 16
        out["mamba_n_heads"] = out["mamba_expand"] * out["hidden_size"] // 16
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


def tiny_model(model_type: str, config_json: str, layers: int = TOY_LAYERS):
    """A random instance of the family at toy size (`shrink`), seeded, in eval mode."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {k: v for k, v in shrink(json.loads(config_json), layers).items() if k != "model_type"}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()


_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "block_sparse_moe", "moe", "ffn", "mixer_mlp")


@functools.cache
def derive_sublayers(model_type: str, config_json: str) -> dict | str:
    """{'attention': (compute, *norms), 'mlp': (...), 'attention_out', 'mlp_out', 'mlp_in'} for a family, or the
    reason why its blocks cannot be split into attention and MLP. `config_json`: the source's (text) config."""
    try:
        model = tiny_model(model_type, config_json)
        _, layers = decoder_layers(model, TOY_LAYERS)
    except Exception as e:  # the family's own code refuses a toy size: no derivation, blocks only
        return f"a tiny {model_type} could not be built to study its blocks ({type(e).__name__})"
    names = [[n for n, c in block.named_children() if any(True for _ in c.parameters())] for block in layers]
    if any(n != names[0] for n in names):
        return "its decoder blocks are not all built alike"
    attention = [n for n in names[0] if n in _ATTENTION]
    mlp = [n for n in names[0] if n in _MLP]
    if len(attention) != 1 or len(mlp) != 1:
        return "its blocks do not have exactly one attention module and one MLP module"
    flow = _trace(model, layers[0], names[0])
    if flow is None:
        return "a forward pass through its blocks could not be traced"
    roles = {"attention": [attention[0]], "mlp": [mlp[0]]}
    post = {}
    for norm in names[0]:
        if norm in (attention[0], mlp[0]):
            continue
        feeds = [s for s in roles if roles[s][0] in flow["consumers"].get(norm, ())]
        fed_by = [s for s in roles if flow["producers"].get(norm) == roles[s][0]]
        if len(feeds) == 1 and not fed_by:
            roles[feeds[0]].append(norm)
        elif len(fed_by) == 1 and not feeds:
            roles[fed_by[0]].append(norm)
            post[fed_by[0]] = norm
        elif len(feeds) != 2:  # a norm feeding both sublayers is shared and stays; anything else is unknown
            return f"the role of {norm!r} in its blocks is unclear"
    pre_mlp = [n for n in roles["mlp"][1:] if n != post.get("mlp")]
    return {
        "attention": tuple(roles["attention"]),
        "mlp": tuple(roles["mlp"]),
        "attention_out": post.get("attention", attention[0]),
        "mlp_out": post.get("mlp", mlp[0]),
        "mlp_in": pre_mlp[0] if pre_mlp else mlp[0],
        "attention_returns": flow["returns"].get(attention[0], 0),
        "mlp_returns": flow["returns"].get(mlp[0], 0),
    }


def _trace(model, block, children: list[str]) -> dict | None:
    """Which child's output each child consumes, by tensor identity, in one forward pass."""
    import torch

    outputs: dict[int, str] = {}
    alive = []  # keeps traced tensors alive, so no id is reused during the pass
    consumers: dict[str, set[str]] = {}
    producers: dict[str, str] = {}
    returns: dict[str, int] = {}

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) and x else x

    def pre(name):
        def hook(module, args, kwargs):
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and id(value) in outputs:
                    source = outputs[id(value)]
                    consumers.setdefault(source, set()).add(name)
                    producers.setdefault(name, source)

        return hook

    def post(name):
        def hook(module, args, output):
            returns[name] = _returns(output)
            out = first(output)
            if isinstance(out, torch.Tensor):
                outputs[id(out)] = name
                alive.append(out)

        return hook

    handles = []
    for name in children:
        child = getattr(block, name)
        handles.append(child.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(child.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(3, 200, (1, 6)))
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return {"consumers": consumers, "producers": producers, "returns": returns}


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
    path, _ = decoder_layers(model, count)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(f"{path}.0.")}
    prefixes = {re.match(r"(.*\.)0\.", name)[1] for name in checkpoint_names(model, state)}
    where = {"layers_path": path, "weights_prefix": prefixes.pop() if len(prefixes) == 1 else ""}
    text_type = text.get("model_type", model_type)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(f"{path}.")}
    where["renamed"] = text is not config or set(checkpoint_names(model, rest)) != set(rest)
    if not split:
        return Family(model_type, **where, no_sublayers="not studied (only whole blocks were asked for)")
    derived = _split(text_type, json.dumps(text, sort_keys=True))
    if "attention" not in derived:
        return Family(model_type, **where, **derived)
    derived = {k: tuple(v) if isinstance(v, list) else v for k, v in derived.items()}
    for sublayer in ("attention", "mlp"):
        children = set()
        for child in derived[sublayer]:
            mine = {k: v for k, v in state.items() if k.startswith(f"{path}.0.{child}.")}
            children |= {name.split(".0.", 1)[1].split(".")[0] for name in checkpoint_names(model, mine)}
        derived[f"{sublayer}_weights"] = tuple(sorted(children))
    return Family(model_type, **where, **derived)


def _split(text_type: str, text_json: str) -> dict:
    """derive_sublayers + self_check for a language model's config, remembered on disk (per skipprune code,
    transformers version and family options): the fields of Family they determine."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import transformers

    from ..prune.families import Family
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
    derived = derive_sublayers(text_type, text_json)
    if isinstance(derived, str):
        fields = {"no_sublayers": derived}
    else:
        why = self_check(text_type, text_json, Family(text_type, **derived))
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


def self_check(model_type: str, config_json: str, family) -> str | None:
    """None when the derived split is exact on a tiny random instance: stubbing a sublayer's modules out (what an
    export's modeling file does) gives bit for bit the logits of the stock model with that sublayer's
    contribution zeroed (a padded batch), and cached greedy decoding equals uncached with attention-free
    layers holding no KV cache. Otherwise the reason; 'attention: ...' when only attention removal fails."""
    import copy

    import torch

    from ..prune.bypass import bypassed
    from ..prune.plan import PrunePlan
    from .remote.modeling_skipprune import remove_sublayer

    ref = tiny_model(model_type, config_json)
    tiny_config = ref.config
    path, _ = decoder_layers(ref, TOY_LAYERS)
    tiny = dataclasses.replace(family, layers_path=path)
    plan = PrunePlan(TOY_LAYERS, {0, 3}, {2, 3})
    pruned = copy.deepcopy(ref)
    layers = tiny.layers(pruned)
    for i in sorted(plan.drop_attention):
        remove_sublayer(layers[i], list(tiny.attention), tiny.attention_returns)
    for i in sorted(plan.drop_mlp):
        remove_sublayer(layers[i], list(tiny.mlp), tiny.mlp_returns)
    vocab = int(getattr(tiny_config.get_text_config(decoder=True), "vocab_size", 256))
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
    text = pruned.config.get_text_config(decoder=True)
    text.kv_sharing_modes = ["reuse" if i in plan.drop_attention else None for i in range(TOY_LAYERS)]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    try:
        with torch.no_grad():
            cached = pruned.generate(ids[:1, :6], use_cache=True, **kw)
            uncached = pruned.generate(ids[:1, :6], use_cache=False, **kw)
    except Exception as e:
        return f"attention: its cache fails with attention-free layers ({type(e).__name__})"
    if not torch.equal(cached, uncached):
        return "attention: its cache does not skip attention-free layers (cached decoding would differ)"
    return None


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
    the family's default config: 'yes' or the reason, per capability (blocks, attention, mlp, serving)."""
    from transformers import AutoConfig

    from ..errors import SkippruneError
    from .nas import NAS_FAMILIES

    try:
        check_config({"model_type": model_type})
        config = shrink(AutoConfig.for_model(model_type).to_dict())
        config["model_type"] = model_type
        family = family_of(config)
    except SkippruneError as e:
        return dict.fromkeys(("blocks", "attention", "mlp", "serving"), str(e))
    except Exception as e:  # the family's own code refuses even its default config at toy size
        why = f"a tiny {model_type} could not be built ({type(e).__name__})"
        return dict.fromkeys(("blocks", "attention", "mlp", "serving"), why)
    sub = family.no_sublayers
    return {
        "blocks": "yes",
        "attention": sub or family.no_attention or "yes",
        "mlp": sub or "yes",
        "serving": "yes"
        if model_type in NAS_FAMILIES
        else f"--format nemotron-nas takes {' and '.join(NAS_FAMILIES)} sources",
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
