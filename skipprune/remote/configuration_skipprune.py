"""Configuration of a model whose attention and/or MLP sublayers were physically removed by skipprune.

`text_config` is the stock configuration (llama, qwen2, gemma2, a multimodal wrapper, ...) of the kept decoder
blocks, renumbered 0..n-1 with per-layer lists such as `layer_types` sliced to match. The per-layer flags say
which of those blocks still have attention and an MLP, and which source layer each one came from. The config has its own
`model_type` so that loading without `trust_remote_code=True` fails instead of silently building the stock
model with random weights where tensors were removed.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class SkipPruneConfig(PreTrainedConfig):
    model_type = "skipprune"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    # One entry per output layer. "Attention" is the block's token mixer: in a hybrid family, linear attention,
    # a Mamba mixer or a convolution in some layers; `layer_mixer` names the one each layer kept (null: removed).
    layer_has_attention: list[bool] | None = None
    layer_has_mlp: list[bool] | None = None
    source_layer_index: list[int] | None = None
    source_num_hidden_layers: int | None = None
    # Names of a decoder block's children owned by each sublayer: the compute module first, then the norms
    # that only it uses. Removed children are replaced by parameter-free stubs.
    attention_modules: list[str] | None = None
    mlp_modules: list[str] | None = None
    # The children receiving the residual stream entering the MLP, and producing its contribution.
    mlp_input_module: str | None = None
    mlp_output_module: str | None = None
    # Where the decoder blocks are in the stock model, and what its attention / MLP modules return (0: a
    # tensor, k: a tuple of k), so that a removed one's stub returns the same.
    decoder_layers: str = "model.layers"
    attention_returns: int | dict = 2
    mlp_returns: int = 0
    # Hybrid families, whose blocks differ by kind: the fields above for each kind of block (`layer_kinds`), and
    # the kind of each output layer (`layer_kind`, indices into it).
    layer_kinds: list[dict] | None = None
    layer_kind: list[int] | None = None
    layer_mixer: list[str | None] | None = None
    # Input-adaptive FFN skipping (FFN-SkipLLM); None: off, and the model computes exactly as without it.
    # Keys: cold_start, cold_end (first / last layers never skipped), sim_threshold, warmup_tokens, max_skips.
    adaptive_ffn_skip: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        n = self.text_config.get_text_config(decoder=True).num_hidden_layers  # a multimodal wrapper's language model
        self.layer_has_attention = list(self.layer_has_attention or [True] * n)
        self.layer_has_mlp = list(self.layer_has_mlp or [True] * n)
        if not len(self.layer_has_attention) == len(self.layer_has_mlp) == n:
            raise ValueError(f"skipprune: per-layer flags must have {n} entries (text_config.num_hidden_layers)")
        if self.source_layer_index is None:
            self.source_layer_index = list(range(n))
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        if self.adaptive_ffn_skip is not None:
            keys = {"cold_start", "cold_end", "sim_threshold", "warmup_tokens", "max_skips"}
            if set(self.adaptive_ffn_skip) != keys:
                raise ValueError(f"skipprune: adaptive_ffn_skip needs exactly the keys {sorted(keys)}")


__all__ = ["SkipPruneConfig"]
