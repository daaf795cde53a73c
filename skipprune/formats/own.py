"""skipprune's own format: the stock config of the kept blocks as `text_config`, per-layer flags (attention,
MLP, the source layer, a hybrid's kind of block and kept mixer), the split of each kind of block, and the two
files of `skipprune/remote` that run the stock decoder with the removed sublayers stubbed out. Any family whose
blocks split; loads in transformers with `trust_remote_code=True`."""

from __future__ import annotations

from ..remote import AUTO_MAP, REMOTE_FILES
from .base import OutputFormat


class SkipPruneOwn(OutputFormat):
    name = model_type = "skipprune"
    code_files = REMOTE_FILES
    model_naming = True  # the class is not the stock one: transformers' renaming on load does not apply

    def config(self, text: dict, plan, family, adaptive: dict | None) -> dict:
        layers = plan.layers
        return {
            "model_type": "skipprune",
            "architectures": ["SkipPruneForCausalLM"],
            "auto_map": dict(AUTO_MAP),
            "layer_has_attention": [layer.attention for layer in layers],
            "layer_has_mlp": [layer.mlp for layer in layers],
            "source_layer_index": [layer.source for layer in layers],
            "source_num_hidden_layers": plan.num_layers,
            **(_kind_fields(family, layers) or _split_fields(family)),
            **_mixer_field(family, layers),
            "decoder_layers": family.layers_path,
            "adaptive_ffn_skip": adaptive,
            "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
            "dtype": text.get("dtype") or text.get("torch_dtype"),
            "text_config": {
                k: v for k, v in text.items() if k not in ("architectures", "auto_map", "transformers_version")
            },
        }

    def tokenizer_config(self, config: dict) -> dict:
        return config["text_config"]

    def card_note(self, record, name: str) -> str:
        return (
            "The model ships a short modeling file (`modeling_skipprune.py`, torch + transformers only) that runs the "
            "stock decoder with the removed sublayers skipped; load it with `trust_remote_code=True`."
        )


def _split_fields(split) -> dict:
    return {
        "attention_modules": list(split.attention),
        "mlp_modules": list(split.mlp),
        "mlp_input_module": split.mlp_in,
        "mlp_output_module": split.mlp_out,
        "attention_returns": split.returns_of("attention"),
        "mlp_returns": split.returns_of("mlp"),
    }


def _mixer_field(family, layers) -> dict:
    """The token mixer each output layer kept (null: removed), where it is not always attention."""
    if family.mixer_noun == "attention":
        return {}
    return {"layer_mixer": [family.at(layer.source).mixer if layer.attention else None for layer in layers]}


def _kind_fields(family, layers) -> dict:
    """A hybrid's kinds of block and the kind of each output layer."""
    if not family.kinds:
        return {}
    used = sorted({family.layer_kind[layer.source] for layer in layers})
    return {
        "layer_kinds": [{"mixer": family.kinds[k].mixer, **_split_fields(family.kinds[k])} for k in used],
        "layer_kind": [used.index(family.layer_kind[layer.source]) for layer in layers],
    }
