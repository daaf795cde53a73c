"""Configuration of a skipprune export in NVIDIA's DeciLM "nemotron-nas" format: the stock LlamaConfig, except
that `block_configs` holds one entry per layer, saying whether its attention and its FFN exist (`no_op`) and
their shapes (`n_heads_in_group`: query heads per KV head; `ffn_mult`: the FFN width as DeciLM encodes it).
The global `num_key_value_heads` and `intermediate_size` are null in config.json, as in NVIDIA's models, and
filled in from the blocks once loaded. Entries read as attributes too (`block_configs[i].attention.no_op`),
which is how vLLM and TensorRT-LLM read them.
"""

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


class DeciLMConfig(LlamaConfig):
    """`block_configs` plus the stock Llama fields. A plain `__init__` rather than dataclass fields, so that engines
    running another transformers major version (4.x included) build it too."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        blocks = [
            BlockSection({k: BlockSection(v) if isinstance(v, dict) else v for k, v in b.items()})
            for b in block_configs or []
        ]
        if blocks:
            heads, hidden = kwargs["num_attention_heads"], kwargs["hidden_size"]
            groups = {b.attention.n_heads_in_group for b in blocks if not b.attention.no_op}
            if len(groups) > 1:
                raise ValueError("this modeling code needs one n_heads_in_group for every layer with attention")
            kwargs["num_key_value_heads"] = heads // groups.pop() if groups else heads
            widths = {ffn_width(b.ffn.ffn_mult, hidden) for b in blocks if not b.ffn.no_op}
            kwargs["intermediate_size"] = max(widths, default=256)
            layers = kwargs.get("num_hidden_layers")
            if len(blocks) != layers:
                raise ValueError(f"block_configs has {len(blocks)} entries for {layers} layers")
        super().__init__(**kwargs)
        self.block_configs = blocks

    def to_dict(self):
        out = super().to_dict()
        if out.get("block_configs"):  # null in the format: the blocks say it
            out["num_key_value_heads"] = out["intermediate_size"] = None
        return out


__all__ = ["DeciLMConfig"]
