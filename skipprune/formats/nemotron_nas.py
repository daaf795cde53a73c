"""The serving format: NVIDIA's DeciLM "nemotron-nas" checkpoint layout, which vLLM, SGLang, TensorRT-LLM and
llama.cpp load natively (no remote code in the engine).

The tensors are the Llama tensors as they are; `config.json` is the Llama config with `model_type:
"nemotron-nas"`, `architectures: ["DeciLMForCausalLM"]`, the global `num_key_value_heads` and
`intermediate_size` set to null, and one `block_configs` entry per output layer:
`attention {no_op, replace_with_linear, n_heads_in_group, window_length, num_sink_tokens, ...}` and
`ffn {no_op, replace_with_linear, ffn_mult, ...}`. What the engines read (their loaders' source, 2026-11):

- vLLM `model_executor/models/nemotron_nas.py`: `attention.no_op`, `ffn.no_op`, `n_heads_in_group` (KV heads
  = heads // n_heads_in_group; the KV-cache head count comes from the first kept attention), `ffn_mult`
  (width = ceil256(int(2 * ffn_mult * hidden / 3))); SGLang `srt/models/nemotron_nas.py`: the same fields.
- TensorRT-LLM `_torch/models/modeling_nemotron_nas.py`: both `no_op` flags, `replace_with_linear`,
  `n_heads_in_group`, `ffn_mult`; no biases.
- llama.cpp `conversion/deci.py`: never reads `no_op`: `n_heads_in_group: null` with `replace_with_linear:
  false` is an attention-free layer, `ffn_mult: null` a layer without FFN. Its runtime graph
  (`src/models/deci.cpp`) drops the attention output of a layer that has attention but no FFN (it skips the
  residual add), so such a layer gets an all-zero FFN of the smallest width the format can describe (256):
  its output is exactly zero in every engine, and it costs 3 x 256 x hidden weights.

vLLM's and SGLang's DeciLM layer have no residual stream before the first kept attention, so output layer 0
cannot keep its FFN without its attention: such plans are refused (remove that block whole instead).
"""

from __future__ import annotations

from ..errors import PlanError, SourceError
from ..prune.plan import layers_phrase
from ..remote import NAS_AUTO_MAP, NAS_FILES
from .base import OutputFormat

NAS_FAMILIES = ("llama", "mistral")
ZERO_FFN_WIDTH = 256
_WHY_NOT = {
    "qwen2": "its attention has biases on q/k/v but not on o, which DeciLM layers cannot express",
    "qwen3": "its attention normalises q and k, which DeciLM layers do not",
    "phi3": "it fuses q/k/v and gate/up into single tensors",
    "gemma2": "its blocks have post-norms and scaled embeddings",
    "gemma3_text": "its blocks have post-norms, q/k norms and scaled embeddings",
    "olmo2": "its blocks use post-norms",
}


def engine_ffn_width(ffn_mult: float, hidden: int) -> int:
    """The FFN width every engine derives from `ffn_mult` (DeciLM's rule)."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def ffn_mult_for(width: int, hidden: int) -> float | None:
    """The shortest decimal `ffn_mult` the engines turn back into exactly `width`; None when there is none."""
    exact = 3 * width / (2 * hidden)
    for digits in range(1, 13):
        mult = round(exact, digits)
        if engine_ffn_width(mult, hidden) == width:
            return float(mult)
    return None


_SERVING = """\
This folder is in NVIDIA's DeciLM "nemotron-nas" layout: `config.json` has one `block_configs` entry per layer
(`no_op` for a removed attention or FFN), which serving engines read natively; the engines ask for
`--trust-remote-code` only to build the config object from `configuration_skipprune_nas.py`.

```
vllm serve {name} --trust-remote-code
python -m sglang.launch_server --model-path {name} --trust-remote-code
trtllm-serve {name}
# llama.cpp: convert (the script ships with llama.cpp), then run the GGUF
python convert_hf_to_gguf.py {name} --outfile {short}.gguf
llama-cli -m {short}.gguf
```
{zero}
In transformers it loads with `trust_remote_code=True` (`modeling_skipprune_nas.py`: the stock Llama decoder with
the removed sublayers skipped)."""


class NemotronNas(OutputFormat):
    name = option = model_type = "nemotron-nas"
    code_files = NAS_FILES
    engines = ("vLLM", "SGLang", "TensorRT-LLM", "llama.cpp")
    search_note = ", only what the serving engines run"
    stand_in_width = ZERO_FFN_WIDTH
    families = NAS_FAMILIES

    def check(self, config: dict, plan, family, adaptive: dict | None) -> None:
        """Refuse, in one line with the reason, what the serving format cannot hold exactly."""
        kind = family.model_type
        if kind not in NAS_FAMILIES:
            why = _WHY_NOT.get(kind, "its decoder block is not Llama's")
            raise PlanError(
                f"--format nemotron-nas holds Llama-shaped blocks (llama, mistral) and {kind} cannot be written in it: "
                f"{why}; export with the default format"
            )
        fix = "export with the default format"
        if adaptive is not None:
            raise PlanError(f"serving engines do not run adaptive FFN skipping: drop --adaptive-ffn or {fix}")
        if config.get("sliding_window") is not None:
            raise SourceError(
                f"the source uses sliding-window attention ({config['sliding_window']} tokens), which the engines' "
                f"DeciLM layers do not apply; {fix}"
            )
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        if config.get("head_dim") not in (None, hidden // heads) or hidden % heads:
            raise SourceError(
                f"the source's head_dim {config.get('head_dim')} differs from hidden_size / num_attention_heads, "
                f"which the engines assume for DeciLM; {fix}"
            )
        if heads % kv:
            raise SourceError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}; {fix}")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise SourceError(
                f"the source has attention or MLP biases, which TensorRT-LLM's DeciLM does not load; {fix}"
            )
        if config.get("hidden_act", "silu") != "silu":
            act = config["hidden_act"]
            raise SourceError(f"the source's MLP uses {act}, llama.cpp's DeciLM only SiLU; {fix}")
        width = int(config["intermediate_size"])
        if ffn_mult_for(width, hidden) is None:
            raise SourceError(
                f"the MLP width {width} cannot be written as a DeciLM ffn_mult: engines derive the width as "
                f"ceil256(int(2 * ffn_mult * {hidden} / 3)), a multiple of 256; {fix}"
            )
        first = plan.layers[0]
        if first.mlp and not first.attention:
            raise PlanError(
                f"source layer {first.source} becomes output layer 0 without attention but with its MLP, which vLLM's "
                f"and SGLang's DeciLM layers cannot run (no residual stream yet): remove block {first.source} whole "
                "(--drop-blocks) or keep its attention"
            )

    def stand_ins(self, plan) -> list[int]:
        """Output layers that keep attention but lose their MLP: llama.cpp needs an all-zero FFN there."""
        return [layer.output for layer in plan.layers if layer.attention and not layer.mlp]

    def removed_mlp_cost(self, hidden: int) -> int:
        return 3 * ZERO_FFN_WIDTH * hidden  # the all-zero stand-in FFN (gate, up, down)

    def frozen(self, record) -> tuple[str, ...]:
        # the all-zero FFNs stay zero: their being zero is what makes every engine agree
        return tuple(f"model.layers.{i}.mlp." for i in record.zero_ffn_layers)

    def tokenizer_config(self, config: dict) -> dict:
        return {"model_type": "llama"}  # the Llama config plus block_configs, with null widths

    def config(self, text: dict, plan, family, adaptive: dict | None) -> dict:
        """config.json in the serving format, from the stock config of the kept blocks (`text`)."""
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        group = heads // int(text.get("num_key_value_heads") or heads)
        mult = ffn_mult_for(int(text["intermediate_size"]), hidden)
        zero = set(self.stand_ins(plan))
        blocks = []
        for layer in plan.layers:
            ffn_mult = mult if layer.mlp else ffn_mult_for(ZERO_FFN_WIDTH, hidden) if layer.output in zero else None
            blocks.append(
                {
                    "attention": {
                        "no_op": not layer.attention,
                        "replace_with_linear": False,
                        "sparsify": None,
                        "n_heads_in_group": group if layer.attention else None,
                        "window_length": None,
                        "num_sink_tokens": None,
                        "use_prefill_window_in_sink_attention": False,
                        "unshifted_sink": False,
                    },
                    "ffn": {
                        "no_op": ffn_mult is None,
                        "replace_with_linear": False,
                        "sparsify": None,
                        "ffn_mult": ffn_mult,
                    },
                }
            )
        config = {k: v for k, v in text.items() if k not in ("architectures", "auto_map", "transformers_version")}
        config.update(
            architectures=["DeciLMForCausalLM"],
            model_type="nemotron-nas",
            auto_map=dict(NAS_AUTO_MAP),
            num_key_value_heads=None,
            intermediate_size=None,
            block_configs=blocks,
            source_layer_index=[layer.source for layer in plan.layers],
            source_num_hidden_layers=plan.num_layers,
        )
        return config

    def card_note(self, record, name: str) -> str:
        zero = (
            f"\nOutput {layers_phrase(record.zero_ffn_layers)} "
            + (
                "keeps its attention but lost its MLP; it holds"
                if len(record.zero_ffn_layers) == 1
                else "keep their attention but lost their MLP; each holds"
            )
            + " an all-zero 256-wide FFN, because llama.cpp's DeciLM graph drops the attention output of a layer "
            "without FFN. Its output is exactly zero in every engine.\n"
            if record.zero_ffn_layers
            else ""
        )
        return _SERVING.format(name=name, short=name.rsplit("/", 1)[-1], zero=zero)
