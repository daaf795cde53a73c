"""The stock LlamaForCausalLM of transformers, except: its layers follow `config.block_configs` (NVIDIA's DeciLM
"nemotron-nas" format, which vLLM, SGLang, TensorRT-LLM and llama.cpp serve natively), as written by skipprune:

1. An attention or FFN marked `no_op` was physically removed: its module is the zero-output stub of
   `modeling_skipprune.py` and its norm an identity, so the block adds nothing for it (no weights); the cache
   has slots only for the layers that kept their attention (`KeptMixerCache` of `modeling_skipprune.py`).
2. An FFN narrower than the others is built at its own width. skipprune writes one only as an all-zero
   256-wide FFN where a layer keeps its attention but lost its MLP (llama.cpp's DeciLM graph would otherwise
   drop that attention): its output is exactly zero.

Needs only torch and transformers; tested with transformers 5.23 to 5.25 (see `modeling_skipprune.py`).
"""

import copy

from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from .configuration_skipprune_nas import DeciLMConfig, ffn_width
from .modeling_skipprune import KeptMixerCache, KeptMixerCacheMixin, cache_argument, remove_sublayer


class DeciLMForCausalLM(KeptMixerCacheMixin, LlamaForCausalLM):
    config_class = DeciLMConfig

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        for block, spec in zip(self.model.layers, config.block_configs):
            if spec.attention.no_op:
                remove_sublayer(block, ["self_attn", "input_layernorm"], returns=2)
            if spec.ffn.no_op:
                remove_sublayer(block, ["mlp", "post_attention_layernorm"], returns=0)
            elif (width := ffn_width(spec.ffn.ffn_mult, config.hidden_size)) != config.intermediate_size:
                narrow = copy.copy(config)
                narrow.intermediate_size = width
                block.mlp = LlamaMLP(narrow)
        if any(spec.attention.no_op for spec in config.block_configs):
            mixers = [
                None if s.attention.no_op else [b.self_attn] for b, s in zip(self.model.layers, config.block_configs)
            ]
            self.kept_mixers = KeptMixerCache(config, mixers)
        self._cache_arg = cache_argument(super().forward)
        self.post_init()

    def forward(self, *args, **kwargs):
        if self.kept_mixers is not None:
            kwargs = self._forward_kwargs(kwargs)
        return super().forward(*args, **kwargs)


__all__ = ["DeciLMForCausalLM"]
