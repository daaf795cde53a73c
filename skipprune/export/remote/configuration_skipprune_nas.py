"""Configuration of a skipprune export in NVIDIA's DeciLM "nemotron-nas" format: the stock LlamaConfig, except
that `block_configs` holds one entry per layer, saying whether its attention and its FFN exist (`no_op`) and
their shapes (`n_heads_in_group`: query heads per KV head; `ffn_mult`: the FFN width as DeciLM encodes it).
The global `num_key_value_heads` and `intermediate_size` are null in config.json, as in NVIDIA's models, and
filled in from the blocks once loaded. Entries read as attributes too (`block_configs[i].attention.no_op`),
which is how vLLM and TensorRT-LLM read them.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


class BlockSection(dict):
    """A JSON object that also reads as attributes; a missing key is a missing attribute."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def ffn_width(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's rule, as every engine applies it: ceil256(int(2 * ffn_mult * hidden / 3))."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


@strict  # as the stock config is, with the fields below (intermediate_size may be null)
class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    # Null in config.json; derived from block_configs on load.
    intermediate_size: int | None = None
    block_configs: list | None = None
    # Where each output layer came from in the source model (provenance only).
    source_layer_index: list[int] | None = None
    source_num_hidden_layers: int | None = None

    def __post_init__(self, **kwargs):
        blocks = [
            BlockSection({k: BlockSection(v) if isinstance(v, dict) else v for k, v in b.items()})
            for b in self.block_configs or []
        ]
        if len(blocks) != self.num_hidden_layers:
            raise ValueError(f"block_configs has {len(blocks)} entries for {self.num_hidden_layers} layers")
        self.block_configs = blocks
        groups = {b.attention.n_heads_in_group for b in blocks if not b.attention.no_op}
        widths = {ffn_width(b.ffn.ffn_mult, self.hidden_size) for b in blocks if not b.ffn.no_op}
        if len(groups) > 1:
            raise ValueError("this modeling code needs one n_heads_in_group for every layer with attention")
        self.num_key_value_heads = self.num_attention_heads // groups.pop() if groups else self.num_attention_heads
        self.intermediate_size = max(widths, default=256)
        # transformers' caches put an empty DummyLayer where kv_sharing_modes says "reuse": layers without
        # attention then hold no KV bytes, and length/mask lookups skip them.
        self.kv_sharing_modes = [("reuse" if b.attention.no_op else None) for b in blocks]
        super().__post_init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        out.pop("kv_sharing_modes", None)
        out["num_key_value_heads"] = out["intermediate_size"] = None
        return out


__all__ = ["DeciLMConfig"]
