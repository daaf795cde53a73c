"""Which parts of a decoder block belong to attention and which to the MLP, per model family (data only).

Each sublayer lists the block's children it owns: its compute module first, then the norms only it uses.
Removing a sublayer removes all of them. Pre-norm families own the norm in front of the sublayer; gemma2/3
and olmo2 also own a post-norm on its output (RMSNorm of zero is zero, so skipping it is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SourceError


@dataclass(frozen=True)
class Family:
    model_type: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    layers_prefix: str = "model.layers."
    # The config derives per-layer attention types (sliding / full) from other fields when `layer_types` is
    # absent; they must be spelled out before layers are removed, or the new numbering re-derives them.
    derives_layer_types: bool = False

    @property
    def attention_out(self) -> str:
        """The child whose output is what attention adds to the residual stream (its post-norm, if any)."""
        return self.attention[-1] if self.post_norms else self.attention[0]

    @property
    def mlp_out(self) -> str:
        return self.mlp[-1] if self.post_norms else self.mlp[0]

    @property
    def mlp_in(self) -> str:
        """The child that first receives the residual stream entering the MLP (its pre-norm, if any)."""
        pre = [n for n in self.mlp[1:] if n != self.mlp_out]
        return pre[0] if pre else self.mlp[0]

    @property
    def post_norms(self) -> bool:
        return self.attention[-1].startswith("post_")


_PRE_NORM = dict(attention=("self_attn", "input_layernorm"), mlp=("mlp", "post_attention_layernorm"))
_SANDWICH = dict(
    attention=("self_attn", "input_layernorm", "post_attention_layernorm"),
    mlp=("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", **_PRE_NORM),
        Family("mistral", **_PRE_NORM),
        Family("qwen2", **_PRE_NORM, derives_layer_types=True),
        Family("qwen3", **_PRE_NORM, derives_layer_types=True),  # q_norm / k_norm live inside self_attn
        Family("phi3", **_PRE_NORM),  # fused qkv_proj / gate_up_proj live inside self_attn / mlp
        Family("gemma2", **_SANDWICH, derives_layer_types=True),
        Family("gemma3_text", **_SANDWICH, derives_layer_types=True),
        Family("olmo2", attention=("self_attn", "post_attention_layernorm"), mlp=("mlp", "post_feedforward_layernorm")),
    )
}


def family_for(model_type: str | None, config: dict | None = None) -> Family:
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    wrapper = (
        " (a multimodal wrapper: its language model is not pruned on its own yet)"
        if config and "text_config" in config
        else ""
    )
    raise SourceError(
        f"unsupported model family {model_type!r}{wrapper}: skipprune supports {', '.join(sorted(FAMILIES))}"
    )
