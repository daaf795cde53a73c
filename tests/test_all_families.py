"""Every decoder family transformers builds: tiny random instances from each family's own default config
(shrunk), whole blocks removed, and attention / MLP removed where the family's blocks split; each export
bit-exact against the bypassed source with a padded batch, cached decoding equal to uncached.

The lists name the model types seen passing with the pinned transformers; a type that stops passing fails
here instead of silently dropping out. README.md lists the types left out, each with its reason.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import skipprune
from skipprune.export.source import read_config
from skipprune.families import family_of
from skipprune.families.toy import shrink
from skipprune.measure.speed import cache_of
from skipprune.prune.bypass import bypassed
from skipprune.prune.plan import PrunePlan

N = 4
# MoE families: the MLP sublayer is the whole sparse block (router, experts, shared experts).
MOE = [
    "afmoe",
    "cohere2_moe",
    "deepseek_v3",
    "ernie4_5_moe",
    "exaone_moe",
    "glm4_moe",
    "glm4_moe_lite",
    "glm_moe_dsa",
    "gpt_oss",
    "granitemoe",
    "jetmoe",
    "minimax_m2",
    "mixtral",
    "olmoe",
    "qwen2_moe",
    "qwen3_moe",
]
# Multimodal wrappers: the language model's sublayers go, the vision (or audio) tower stays byte for byte.
MULTIMODAL = ["fuyu", "gemma3", "got_ocr2"]
SUBLAYERS = sorted(
    MOE
    + MULTIMODAL
    + [
        "apertus",
        "arcee",
        "aria_text",
        "bitnet",
        "cohere",
        "cohere2",
        "cwm",
        "doge",
        "ernie4_5",
        "exaone4",
        "falcon",
        "flex_olmo",
        "gemma",
        "gemma2",
        "gemma3_text",
        "glm",
        "glm4",
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gpt_neox",
        "granite",
        "helium",
        "internlm3",
        "jais2",
        "llama",
        "mistral",
        "olmo",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "stablelm",
        "starcoder2",
    ]
)
# Hybrids: each block's token mixer is attention, linear attention, a Mamba mixer or a convolution (Falcon-H1:
# Mamba and attention side by side), and blocks of each kind split their own way.
HYBRID = [
    "bamba",
    "falcon_h1",
    "granitemoehybrid",
    "jamba",
    "lfm2",
    "lfm2_moe",
    "olmo_hybrid",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen3_5_text",
    "qwen3_next",
]
# Whole blocks only: blocks that do not split into a token mixer and an MLP (pure state-space models, blocks of
# one module, shared blocks).
BLOCKS_ONLY = [
    "biogpt",
    "bloom",
    "cpmant",
    "ctrl",
    "deepseek_v4",
    "falcon_mamba",
    "mamba",
    "nemotron_h",
    "zamba2",
]
TOY_OVERRIDES: dict = {}
BLOCKS = sorted(SUBLAYERS + HYBRID + BLOCKS_ONLY)


def tiny_source(folder, model_type: str):
    config = shrink(AutoConfig.for_model(model_type).to_dict(), N) | TOY_OVERRIDES.get(model_type, {})
    config.pop("model_type", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    with torch.no_grad():  # default-initialised norms are all ones or zeros: randomise so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


def check_export(src, out, plan):
    family = family_of(read_config(src, "src"))  # decoded as transformers reads it (inf in nemotron_h)
    skipprune.export(src, out, plan)
    vocab = AutoConfig.from_pretrained(src).get_text_config(decoder=True).vocab_size
    ids = torch.randint(3, min(vocab, 200), (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad(), bypassed(ref, plan, family):
        want = ref(input_ids=ids, attention_mask=mask).logits
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        cached = model.generate(ids[:1, :6], use_cache=True, **kw)
        uncached = model.generate(ids[:1, :6], use_cache=False, **kw)
    assert torch.equal(got[mask.bool()], want[mask.bool()])
    assert torch.equal(cached, uncached)
    return family


def test_the_matrix_is_big_enough():
    assert len(BLOCKS) >= 40 and len(SUBLAYERS) >= 25 and len(MOE) >= 5 and len(MULTIMODAL) >= 2 and len(HYBRID) >= 8


# Families that place kinds of block by a rule (Jamba: attention every second layer in the toy) lose a block
# whose removal keeps the rule; test_blocks_placed_by_a_rule... checks the refusal of the others.
BLOCK_DROPPED = {"jamba": 3}


@pytest.mark.parametrize("model_type", BLOCKS)
def test_whole_blocks(model_type, tmp_path):
    src = tiny_source(tmp_path / "src", model_type)
    block = BLOCK_DROPPED.get(model_type, 1)
    check_export(src, tmp_path / "out", PrunePlan(N, {block}, {block}))
    assert "auto_map" not in json.loads((tmp_path / "out" / "config.json").read_text())  # the stock architecture


@pytest.mark.parametrize("model_type", BLOCKS)
def test_layer_major_execution_equals_a_plain_forward(model_type):
    """measure/stream.py runs the family's own forward around stand-ins, then each block over all batches:
    the logits must be a plain forward's, bit for bit, whatever the family hands its blocks."""
    from skipprune.measure.stream import LayerMajor

    config = shrink(AutoConfig.for_model(model_type).to_dict(), N) | TOY_OVERRIDES.get(model_type, {})
    config.pop("model_type", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()
    vocab = model.config.get_text_config(decoder=True).vocab_size
    batches = [torch.randint(3, min(vocab, 200), (1, 10), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    with torch.no_grad():
        want = [model(input_ids=ids, use_cache=False).logits for ids in batches]
    run, got = LayerMajor(model, batches), {}
    run.run()
    run.logits(got.__setitem__)
    assert len(got) == 2 and all(torch.equal(want[b], got[b]) for b in range(2))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("model_type", SUBLAYERS)
def test_attention_and_mlp(model_type, tmp_path):
    src = tiny_source(tmp_path / "src", model_type)
    # attention alone (layer 1), the MLP alone (layer 2), both (block 3); layer 0 whole
    family = check_export(src, tmp_path / "out", PrunePlan(N, {1, 3}, {2, 3}))
    assert family.no_sublayers is None and family.no_attention is None


def test_moe_mlp_takes_the_whole_sparse_block(tmp_path):
    src = tiny_source(tmp_path / "src", "qwen2_moe")
    skipprune.export(src, tmp_path / "out", PrunePlan(N, set(), {2}))
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        layer2 = [k for k in f.keys() if k.startswith("model.layers.2.")]
    assert layer2 and not [k for k in layer2 if ".mlp." in k or "post_attention_layernorm" in k]
    with safe_open(src / "model.safetensors", "pt") as f:
        gate = [k for k in f.keys() if k.startswith("model.layers.2.mlp.")]
    assert any("shared_expert" in k for k in gate) and any(".gate." in k for k in gate)


@pytest.mark.parametrize("model_type", BLOCKS_ONLY)
def test_blocks_only_families_refuse_sublayers_in_one_line(model_type, tmp_path):
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", model_type)
    assert_clean_failure(
        run("export", src, tmp_path / "out", "--drop-attn", "2"), "only whole blocks", tmp_path / "out"
    )


def test_families_command(tmp_path):
    from common import run

    proc = run(
        "families", "llama", "qwen2_moe", "gemma3", "gpt2", "qwen3_5", "t5", "nope", "--json", tmp_path / "f.json"
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:5] for line in proc.stdout.splitlines()[1:]}
    assert rows["llama"] == ["yes", "yes", "yes", "yes"]
    assert rows["qwen2_moe"] == ["yes", "yes", "yes", "no"]
    assert rows["gemma3"][:3] == ["yes", "yes", "yes"] and rows["t5"][0] == "no"
    assert rows["qwen3_5"][:3] == ["yes", "yes", "yes"]  # hybrid: each kind of block splits its own way
    assert "token mixers: linear attention, attention" in next(
        line for line in proc.stdout.splitlines() if line.startswith("qwen3_5")
    )
    table = json.loads((tmp_path / "f.json").read_text())
    assert "encoder-decoder" in table["t5"]["blocks"] and table["qwen3_5"]["mixers"] == "linear attention, attention"
    assert "does not know model_type 'nope'" in table["nope"]["blocks"]
    assert "nemotron-nas takes llama and mistral" in table["qwen2_moe"]["serving"]  # every "no" says why
    assert "--format nemotron-nas takes" in next(line for line in proc.stdout.splitlines() if line.startswith("gpt"))
    typo = run("families", "llamma")
    assert typo.returncode == 1 and typo.stderr.strip() == (
        "error: unknown model type 'llamma': did you mean 'llama'? (`skipprune families` lists them all)"
    )


# The table version 1 had typed by hand for its 8 families: the derivation must find the same.
_PRE = dict(attention=("self_attn", "input_layernorm"), mlp=("mlp", "post_attention_layernorm"))
_SANDWICH = dict(
    attention=("self_attn", "input_layernorm", "post_attention_layernorm"),
    mlp=("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
)
HAND_WRITTEN = {
    "llama": _PRE,
    "mistral": _PRE,
    "qwen2": _PRE,
    "qwen3": _PRE,
    "phi3": _PRE,
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "olmo2": dict(attention=("self_attn", "post_attention_layernorm"), mlp=("mlp", "post_feedforward_layernorm")),
}


@pytest.mark.parametrize("model_type", sorted(HAND_WRITTEN))
def test_derivation_reproduces_the_hand_written_table(model_type):
    from tiny import anatomy_of

    family = anatomy_of(model_type)
    assert (family.attention, family.mlp) == (HAND_WRITTEN[model_type]["attention"], HAND_WRITTEN[model_type]["mlp"])
    post = model_type in ("gemma2", "gemma3_text", "olmo2")
    assert family.attention_out == (family.attention[-1] if post else "self_attn")


def test_multimodal_keeps_its_tower_and_processor(tmp_path):
    from safetensors import safe_open

    src = tiny_source(tmp_path / "src", "gemma3")
    (src / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Gemma3ImageProcessor"}))
    skipprune.export(src, tmp_path / "out", PrunePlan(N, {1}, {2}))
    assert (tmp_path / "out" / "preprocessor_config.json").read_bytes() == (
        src / "preprocessor_config.json"
    ).read_bytes()
    with safe_open(src / "model.safetensors", "pt") as s, safe_open(tmp_path / "out" / "model.safetensors", "pt") as o:
        tower = [k for k in s.keys() if "vision" in k or "projector" in k]
        assert tower
        for name in tower:  # written under the loaded model's names (model.vision_tower...), same bytes
            a, b = s.get_tensor(name), o.get_tensor("model." + name)
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_infinite_floats_keep_transformers_spelling(tmp_path):
    """Nemotron-H's time_step_limit holds inf, which transformers writes as {"__float__": "Infinity"}: read back as
    a float, written again the same way (bare Infinity is not JSON)."""
    src = tiny_source(tmp_path / "src", "nemotron_h")
    assert read_config(src, "src")["time_step_limit"] == [0.0, float("inf")]
    skipprune.export(src, tmp_path / "out", PrunePlan(N, {1}, {1}))
    text = (tmp_path / "out" / "config.json").read_text()
    assert '"__float__": "Infinity"' in text and "Infinity," not in text.replace('"Infinity"', "")
    assert AutoConfig.from_pretrained(tmp_path / "out").time_step_limit[1] == float("inf")


def test_toys_keep_every_kind_of_layer():
    """A toy of a hybrid keeps the first layer of each kind its pattern names, and its lists of layer numbers
    follow the new numbering."""
    toy = shrink(AutoConfig.for_model("qwen3_next").to_dict(), N)
    assert set(toy["layer_types"]) == {"linear_attention", "full_attention"} and len(toy["layer_types"]) == N
    toy = shrink(AutoConfig.for_model("zamba2").to_dict(), N)
    assert [toy["layers_block_type"][i] for i in toy["hybrid_layer_ids"]] == ["hybrid", "hybrid"]
    assert shrink(AutoConfig.for_model("bamba").to_dict(), N)["attn_layer_indices"] == [N // 2, N - 1]
    # two layers of each kind where there is room: one attention layer is left when another loses its own
    assert (
        shrink(AutoConfig.for_model("qwen3_5_text").to_dict(), N)["layer_types"]
        == ["linear_attention"] * 2 + ["full_attention"] * 2
    )


@pytest.mark.parametrize("model_type", HYBRID)
def test_token_mixers(model_type, tmp_path):
    """The first layer with each kind of mixer loses it (attention, linear attention, Mamba, convolution) and
    another layer its MLP: exact against the bypassed source, cached decoding equal to uncached, and no cache
    or state kept for a layer without its mixer."""
    src = tiny_source(tmp_path / "src", model_type)
    family = family_of(read_config(src, "src"))
    mixers = [family.at(i).mixer for i in range(N)]
    firsts = {mixers.index(m) for m in set(mixers)}
    plan = PrunePlan(N, firsts, {min(set(range(N)) - firsts)})
    assert family.mixer_noun == "token mixer" and family.no_sublayers is None and family.no_attention is None
    check_export(src, tmp_path / "out", plan)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["layer_mixer"] == [None if i in firsts else family.at(i).mixer for i in range(N)]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    stock = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        cache = cache_of(model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True))
        full = cache_of(stock(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True))
    # a slot for each kept mixer only, of the kind the stock model gives that layer
    assert [type(layer) for layer in cache.layers] == [type(full.layers[i]) for i in range(N) if i not in firsts]


def test_drop_attn_means_attention_and_drop_mixer_any_mixer(tmp_path):
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", "qwen3_5_text")  # linear attention in layers 0-1, attention in 2-3
    proc = run("export", src, tmp_path / "out", "--drop-attn", "0,2")
    assert_clean_failure(proc, "layer 0 mixes tokens by linear attention, not attention", tmp_path / "out")
    assert "its attention layers are 2-3" in proc.stderr and "--drop-mixer" in proc.stderr
    assert_clean_failure(
        run("export", src, tmp_path / "out", "--drop-attn", "2,3"), "keep at least one", tmp_path / "out"
    )
    proc = run("export", src, tmp_path / "out", "--drop-mixer", "0", "--drop-attn", "2", "--drop-mlp", "1")
    assert proc.returncode == 0, proc.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "remove token mixer of layers 0,2; MLP of layer 1" in card
    assert "| 0 | 0 | **removed** (linear attention) | kept |" in card and "| 3 | 3 | kept (attention) | kept |" in card
    assert "skipprune export src out --drop-attn 2 --drop-mixer 0 --drop-mlp 1" in card  # reproduce
    assert json.loads((tmp_path / "out" / "config.json").read_text())["layer_mixer"] == [
        None,
        "linear attention",
        None,
        "attention",
    ]


def test_falcon_h1_mamba_and_attention_go_together(tmp_path):
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", "falcon_h1")
    assert_clean_failure(
        run("export", src, tmp_path / "out", "--drop-attn", "1"),
        "by mamba + attention, not attention (none of its layers mixes tokens by attention alone)",
        tmp_path / "out",
    )


def test_blocks_placed_by_a_rule_are_refused_where_renumbering_moves_them(tmp_path):
    """Jamba places attention and experts by period and offset (toy: attention in layers 0 and 2, experts in 3):
    removing the last block keeps the pattern, removing block 1 would turn layer 2 into a Mamba layer. Zamba2's
    shared blocks hold one adapter per hybrid layer: a hybrid layer cannot go."""
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", "jamba")
    check_export(src, tmp_path / "ok", PrunePlan(N, {3}, {3}))
    proc = run("export", src, tmp_path / "out", "--drop-blocks", "1")
    assert_clean_failure(proc, "jamba: without block 1, its config would build source layers 2-3", tmp_path / "out")
    src = tiny_source(tmp_path / "zsrc", "zamba2")
    assert_clean_failure(
        run("export", src, tmp_path / "out", "--drop-blocks", "3"), "with other weights", tmp_path / "out"
    )


def test_per_layer_inputs_block_whole_block_removal(tmp_path):
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", "gemma3n_text")
    proc = run("export", src, tmp_path / "out", "--drop-blocks", "1")
    assert_clean_failure(proc, "embed_tokens_per_layer.weight", tmp_path / "out")
    assert "sized by the number of layers" in proc.stderr


def test_adaptive_ffn_refuses_parallel_mlps(tmp_path):
    from common import assert_clean_failure, run

    src = tiny_source(tmp_path / "src", "granitemoehybrid")
    proc = run("export", src, tmp_path / "out", "--drop-mlp", "1", "--adaptive-ffn")
    assert_clean_failure(proc, "several in parallel", tmp_path / "out")


def test_analyze_on_a_hybrid_suggests_commands_that_run(tmp_path):
    """Suggestions name layers whose mixer is not attention with --drop-mixer, and say which plans an export
    would refuse (one that removes every attention layer) instead of printing a command that fails."""
    from skipprune.data import HELDOUT

    from common import run
    from tiny import make_byte_fallback_tokenizer

    text = HELDOUT.read_text(encoding="utf-8")[:20000]
    config = shrink(AutoConfig.for_model("qwen3_5_text").to_dict(), N) | {"vocab_size": 400}
    config.pop("model_type")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_5_text", **config))
    model.save_pretrained(tmp_path / "src")
    make_byte_fallback_tokenizer(tmp_path / "src", text, merges=100)
    proc = run("analyze", tmp_path / "src", "--samples", "2", "--seq-len", "16", "--suggest", "attn:50%")
    assert proc.returncode == 0, proc.stderr
    assert "[last-N]" in proc.stdout and "not possible here" in proc.stdout  # last-N: both attention layers
    commands = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("skipprune export")]
    assert commands and any("--drop-mixer" in c for c in commands)
    for k, command in enumerate(commands):
        out = tmp_path / f"out{k}"
        parts = command.split()
        done = run(parts[1], parts[2], out, *parts[4:])
        assert done.returncode == 0, (command, done.stderr)
