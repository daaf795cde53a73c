"""The stock <Family>ForCausalLM of transformers, except: some decoder blocks have lost their attention and/or
their MLP sublayer (physically removed by skipprune).

<Family> is the source model's family (any causal LM transformers builds, multimodal wrappers included), named
by `config.text_config`; its stock model runs every kept block, so each computes exactly what it computed
before. The differences:

1. A removed sublayer's module (attention, or in a hybrid family the block's other token mixer: linear
   attention, a Mamba mixer, a convolution; or the MLP) is replaced by `RemovedSublayer`, whose output is
   zero, and its norms by identities: the block adds nothing for it to the residual stream, which is
   precisely "sublayer bypassed" (a post-norm of zero is zero too). The stubs hold no weights.
2. The cache has slots only for the layers that kept a token mixer (`KeptMixerCache`), so a layer without one
   stores nothing, and the sequence length is read where tokens are counted.
3. Blocks that lost both sublayers are not here at all (layers are renumbered; `source_layer_index` says
   where each came from).
4. Optional: input-adaptive FFN skipping during generation (FFN-SkipLLM), off unless the config enables it.

Needs only torch and transformers; tested with transformers 5.23 to 5.25. What it uses of transformers:
`PreTrainedModel`, `GenerationMixin`, `MODEL_FOR_CAUSAL_LM_MAPPING`, `DynamicCache(config=...)` and the
`layers` list of a cache, each stock mixer module's `layer_idx` (or `layer_id`) attribute, and
`CausalLMOutputWithPast`.
"""

import inspect
import logging

import torch
from torch import nn
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import __version__ as transformers_version
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_skipprune import SkipPruneConfig

# The transformers releases this file was tested with: older ones lack what it needs, newer ones may work.
TESTED = ((5, 23), (5, 25))
_found = tuple(int(p) for p in transformers_version.split(".")[:2])
if _found < TESTED[0]:
    raise ImportError(
        f"this skipprune model needs transformers >= 5.23 (found {transformers_version}): "
        "pip install 'transformers>=5.23,<5.26'"
    )
if _found > TESTED[1]:
    logging.getLogger(__name__).warning(
        "this skipprune model was tested with transformers 5.23 to 5.25, not %s: if it fails, "
        "pip install 'transformers>=5.23,<5.26', or run `skipprune refresh` on it with a newer skipprune",
        transformers_version,
    )

# -- 1. the stub and the removal ------------------------------------------------------------------------------


class RemovedSublayer(nn.Module):
    """Stands in for a deleted token mixer (attention, linear attention, Mamba, ...) or MLP module: contributes
    zero, stores nothing. It returns what the module it replaces returned: a tensor (`returns` 0) or a tuple
    of `returns` items (the rest None)."""

    def __init__(self, returns: int):
        super().__init__()
        self.returns = returns

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        zeros = torch.zeros_like(hidden)
        return (zeros, *[None] * (self.returns - 1)) if self.returns else zeros


def remove_sublayer(block: nn.Module, names: list, returns) -> None:
    """Remove one sublayer from a stock decoder block: `names` is its compute module, then the norms only it
    uses; `returns` what the compute module returns, or {module: returns} for several modules that run in
    parallel (Falcon-H1's Mamba and attention), the norms after them. skipprune's in-memory sweep and its check
    of each family use this very function."""
    computes = returns if isinstance(returns, dict) else {names[0]: returns}
    for name in names:
        if name not in computes:
            setattr(block, name, nn.Identity())
            continue
        stub, module = RemovedSublayer(computes[name]), getattr(block, name)
        for key, buffer in module.named_buffers(recurse=False):  # unsaved constants the family's init may set
            if key in module._non_persistent_buffers_set:
                stub.register_buffer(key, buffer, persistent=False)
        setattr(block, name, stub)


def layer_split(config, i: int) -> dict:
    """How output layer i splits into its token mixer and its MLP: blocks of a hybrid family differ by kind."""
    if config.layer_kind is not None:
        return config.layer_kinds[config.layer_kind[i]]
    keys = ("attention_modules", "attention_returns", "mlp_modules", "mlp_returns")
    split = {key: getattr(config, key) for key in keys}
    return {**split, "mlp_input_module": config.mlp_input_module, "mlp_output_module": config.mlp_output_module}


# -- 2. the cache --------------------------------------------------------------------------------------------


def mixer_modules(split: dict) -> list[str]:
    """The compute modules of a layer's token mixer (several run side by side in some hybrid blocks)."""
    returns = split["attention_returns"]
    return list(returns) if isinstance(returns, dict) else [split["attention_modules"][0]]


class KeptMixerCache:
    """Cache slots for the layers that kept a token mixer, none for the others.

    A stock mixer module (attention, linear attention, Mamba, a convolution) keeps its state in the cache slot
    its `layer_idx` (in a few families `layer_id`) names, and the stock model reads the sequence length from
    slot 0: a slot left empty for a layer without a mixer would restart positions. So the kept mixers are
    numbered 0..k-1 in layer order, and the cache is the stock `DynamicCache` of the whole model with only
    their slots kept: each slot is of the kind the stock model gives its layer (sliding window, linear
    attention, ...), and nothing depends on how transformers marks a slot it does not use. `mixers[i]`: layer
    i's mixer modules, None where it has none."""

    def __init__(self, text_config, mixers: list):
        self.text_config = text_config
        self.layers = [i for i, modules in enumerate(mixers) if modules is not None]
        for slot, i in enumerate(self.layers):
            for module in mixers[i]:
                for sub in module.modules():
                    for name in ("layer_idx", "layer_id"):
                        if getattr(sub, name, None) == i:
                            setattr(sub, name, slot)

    def new(self, cache_class=DynamicCache, **kwargs):
        """An empty cache for this model; `cache_class` and `kwargs` as for a stock model (`StaticCache` with
        `max_cache_len=...`, `offloading=True`, ...)."""
        cache = cache_class(config=self.text_config, **kwargs)
        cache.layers = [cache.layers[i] for i in self.layers]
        return cache


def cache_argument(forward) -> str:
    """The name under which a stock forward takes its cache (`cache` since transformers 5.24)."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class KeptMixerCacheMixin:
    """Hands the stock model a `KeptMixerCache` wherever it would build its own cache (forward, generate)."""

    kept_mixers: KeptMixerCache | None = None  # None: every layer kept its mixer, the stock cache fits
    _cache_arg = "past_key_values"

    def new_cache(self, cache_class=DynamicCache, **kwargs):
        """An empty cache for this model (see `KeptMixerCache.new`), e.g. to pass a `StaticCache` to generate."""
        if self.kept_mixers is None:
            return cache_class(config=self.config.get_text_config(decoder=True), **kwargs)
        return self.kept_mixers.new(cache_class, **kwargs)

    def _with_cache(self, kwargs: dict, use_cache) -> dict:
        slots = self.kept_mixers
        if slots is None or kwargs.get("cache", kwargs.get("past_key_values")) is not None or use_cache is False:
            return kwargs
        return {**kwargs, self._cache_arg: slots.new()}

    def _forward_kwargs(self, kwargs: dict) -> dict:
        use = kwargs.get("use_cache")
        return self._with_cache(
            kwargs, getattr(self.kept_mixers.text_config, "use_cache", True) if use is None else use
        )

    def generate(self, *args, **kwargs):
        if self.kept_mixers is not None:
            config = kwargs.get("generation_config") or self.generation_config
            use = kwargs.get("use_cache", getattr(config, "use_cache", True))
            implementation = kwargs.get("cache_implementation", getattr(config, "cache_implementation", None))
            if implementation not in (None, "dynamic") and use is not False:
                raise ValueError(
                    f"cache_implementation={implementation!r}: this model's layers without a token mixer get no "
                    "cache slot, so pass the cache instead, e.g. "
                    "generate(..., cache=model.new_cache(StaticCache, max_cache_len=N))"
                )
            kwargs = {**self._with_cache(kwargs, use), "cache_implementation": None}
        return super().generate(*args, **kwargs)


# -- 3. the model ---------------------------------------------------------------------------------------------


class SkipPrunePreTrainedModel(PreTrainedModel):
    """Base class: the stock family's causal-LM class and its attention-kernel support, from `text_config`."""

    config_class = SkipPruneConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # Which attention kernels work is the stock family's business: adopt its flags (gemma2 has no sdpa).
    _ATTENTION_FLAGS = ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend")

    def __init__(self, config: SkipPruneConfig, *args, **kwargs):
        self._stock_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config.text_config)]
        for flag in self._ATTENTION_FLAGS:
            setattr(self, flag, getattr(self._stock_class, flag, False))
        super().__init__(config, *args, **kwargs)

    def _init_weights(self, module):
        """The stock family's own initialisation, which also fills the buffers a checkpoint does not hold (Falcon-H1's
        muP vector, ...). It writes through transformers' `initialization` functions, which leave loaded weights
        alone."""
        stock = getattr(self, "_stock", None)
        if stock is None:
            return super()._init_weights(module)
        return stock[0]._init_weights(module)

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers skips modules without weights of their own when it initialises remote code, which would
        # leave such buffers empty; the initialisation above is the stock one, so it is not custom.
        return False


def _decoder_layers(model: nn.Module, path: str) -> nn.ModuleList:
    for part in path.split("."):
        model = getattr(model, part)
    return model


class SkipPruneForCausalLM(KeptMixerCacheMixin, SkipPrunePreTrainedModel, GenerationMixin):
    """The stock causal LM of the source family with the removed sublayers stubbed out (see the module docs).

    Its children are the stock model's own (`model` and `lm_head` for most families), so weight names and
    everything the stock forward does (logit scaling or soft-capping, a vision tower, ...) stay the same;
    `forward` is the stock forward."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SkipPruneConfig):
        super().__init__(config)
        stock = self._stock_class(config.text_config)
        for name, child in stock.named_children():
            self.add_module(name, child)
        self._stock = (stock,)  # a tuple, so torch does not register it twice: it shares the children above
        self._tied_weights_keys = getattr(stock, "_tied_weights_keys", None)
        self.base_model_prefix = stock.base_model_prefix
        layers = _decoder_layers(self, config.decoder_layers)
        mixers = []
        for i, (block, has_attention, has_mlp) in enumerate(
            zip(layers, config.layer_has_attention, config.layer_has_mlp)
        ):
            split = layer_split(config, i)
            if not has_attention:
                remove_sublayer(block, split["attention_modules"], split["attention_returns"])
            if not has_mlp:
                remove_sublayer(block, split["mlp_modules"], split["mlp_returns"])
            mixers.append([getattr(block, name) for name in mixer_modules(split)] if has_attention else None)
        if not all(config.layer_has_attention):
            self.kept_mixers = KeptMixerCache(config.text_config, mixers)
        self._cache_arg = cache_argument(stock.forward)
        self.ffn_skip = FFNSkipState(config, stock, layers) if config.adaptive_ffn_skip is not None else None
        self.ffn_skip_stats = None
        self.post_init()

    def get_decoder(self):
        return self._stock[0].get_decoder()

    def forward(self, *args, **kwargs) -> CausalLMOutputWithPast:
        if self.kept_mixers is not None:
            kwargs = self._forward_kwargs(kwargs)
        return self._stock[0](*args, **kwargs)

    def generate(self, *args, **kwargs):
        """As usual; with adaptive FFN skipping, `self.ffn_skip_stats` then says how many FFN blocks this call
        skipped out of how many it could have skipped."""
        if self.ffn_skip is None:
            return super().generate(*args, **kwargs)
        self.ffn_skip.skipped = self.ffn_skip.eligible = 0
        out = super().generate(*args, **kwargs)
        s = self.ffn_skip
        self.ffn_skip_stats = {"skipped": s.skipped, "eligible": s.eligible, "ratio": s.skipped / max(1, s.eligible)}
        return out


# -- 4. input-adaptive FFN skipping ---------------------------------------------------------------------------


class FFNSkipState:
    """Input-adaptive FFN skipping (Jaiswal et al. 2024, Algorithm 1), during cached decoding only.

    For each generated token after `warmup_tokens`, walking the layers outside the first `cold_start` and last
    `cold_end`: compute cos(h, h + FFN(h)) on the residual stream h; once it reaches `sim_threshold`, skip the
    FFN of the next `max_skips` eligible layers, then check again. Attention always runs, so the KV cache is
    untouched. Batches share one decision: a layer's FFN is skipped only when every sequence's cosine reached
    the threshold (each decode step holds one real token per sequence, so padding never votes). Prompts
    (prefill, more than one token) are always computed in full.
    """

    def __init__(self, config, model, layers):
        s = config.adaptive_ffn_skip
        self.threshold, self.warmup, self.max_skips = (
            float(s["sim_threshold"]),
            int(s["warmup_tokens"]),
            int(s["max_skips"]),
        )
        n = len(layers)
        self.layers = {i for i in range(int(s["cold_start"]), n - int(s["cold_end"])) if config.layer_has_mlp[i]}
        self.tokens = self.remaining = self.skipped = self.eligible = 0
        self.active, self.h = False, None
        model.register_forward_pre_hook(self._new_step, with_kwargs=True)
        for i in sorted(self.layers):
            block, split = layers[i], layer_split(config, i)
            getattr(block, split["mlp_input_module"]).register_forward_pre_hook(self._keep_residual)
            mlp, out = split["mlp_modules"][0], split["mlp_output_module"]
            _make_adaptive(getattr(block, mlp), None if out == mlp else getattr(block, out), self)

    def _new_step(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if x.shape[1] > 1 or cache is None:
            self.tokens, self.active = 0, False  # a prompt: computed in full
        else:
            self.tokens += 1
            self.active = self.tokens > self.warmup
        self.remaining = 0

    def _keep_residual(self, module, args):
        self.h = args[0]


def _make_adaptive(mlp: nn.Module, post_norm: nn.Module | None, state: FFNSkipState) -> None:
    """Give `mlp` a forward that the shared state may skip for the current token. The module itself (and so
    every weight name) stays as it is."""
    compute = mlp.forward

    def forward(x):
        if not state.active:
            return compute(x)
        state.eligible += 1
        if state.remaining > 0:
            state.remaining -= 1
            state.skipped += 1
            return torch.zeros_like(x)
        out = compute(x)
        delta = out if post_norm is None else post_norm(out)
        cos = torch.nn.functional.cosine_similarity(state.h.float(), (state.h + delta).float(), dim=-1)
        if bool(cos.min() >= state.threshold):
            state.remaining = state.max_skips
        return out

    mlp.forward = forward


__all__ = ["KeptMixerCache", "SkipPruneForCausalLM", "SkipPrunePreTrainedModel", "remove_sublayer"]
