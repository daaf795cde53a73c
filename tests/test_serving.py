"""The serving format (--format nemotron-nas): the config the engines read, exactness in transformers, the
plans and sources it refuses, and llama.cpp itself running the exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

import skipprune
from skipprune.formats.nemotron_nas import engine_ffn_width, ffn_mult_for
from skipprune.prune.bypass import bypassed
from skipprune.prune.plan import PrunePlan
from skipprune.remote import is_own_code

from common import assert_clean_failure, run
from tiny import anatomy_of, inputs, make_byte_fallback_tokenizer, make_model

N = 6
WIDTH = 512  # the MLP width; the all-zero stand-ins are 256 wide, so the two are told apart
PLANS = {
    "attention": PrunePlan(N, {3, 4, 5}, set()),
    "mlp": PrunePlan(N, set(), {2, 4}),
    # attention and MLP on different layers, and block 3 whole
    "mixed": PrunePlan(N, {1, 3, 5}, {2, 3}),
}


@pytest.fixture(scope="module")
def nas_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("nas")
    return {
        "llama": make_model(root / "llama", "llama", intermediate_size=WIDTH),
        "mistral": make_model(root / "mistral", "mistral", intermediate_size=WIDTH, sliding_window=None),
    }


def bypassed_logits(src: Path, plan: PrunePlan, family: str, ids, mask=None):
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad(), bypassed(ref, plan, anatomy_of(family)):
        return ref(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_exact_in_transformers(family, name, nas_sources, tmp_path):
    src, plan, out = nas_sources[family], PLANS[name], tmp_path / "out"
    record = skipprune.export(src, out, plan, format="nemotron-nas").record
    assert record.verification.numerics.max_abs_logit_diff == 0
    assert (record.format, record.architecture) == ("nemotron-nas", "nemotron-nas")

    ids, mask = inputs()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        prompt = ids[:1, :10]
        kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(prompt, use_cache=True, **kw), model.generate(prompt, use_cache=False, **kw))
    want = bypassed_logits(src, plan, family, ids, mask)
    assert torch.equal(got[mask.bool()], want[mask.bool()])

    # Zero-width stand-ins exactly where a layer keeps attention but lost its MLP; every other kept tensor is
    # the source's, byte for byte.
    zero = [layer.output for layer in plan.layers if layer.attention and not layer.mlp]
    assert record.zero_ffn_layers == zero
    with safe_open(src / "model.safetensors", "pt") as s, safe_open(out / "model.safetensors", "pt") as o:
        renamed = {
            f"model.layers.{plan.output_index(int(n.split('.')[2]))}.{n.split('.', 3)[3]}": n
            for n in s.keys()
            if n.startswith("model.layers.") and plan.output_index(int(n.split(".")[2])) is not None
        }
        for name_out in o.keys():
            layer = int(name_out.split(".")[2]) if name_out.startswith("model.layers.") else None
            if layer in zero and ".mlp." in name_out:
                t = o.get_tensor(name_out)
                assert 256 in t.shape and not t.any()
                continue
            a = o.get_tensor(name_out)
            b = s.get_tensor(renamed.get(name_out, name_out))
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_config_holds_what_the_engines_read(nas_sources, tmp_path):
    plan, out = PLANS["mixed"], tmp_path / "out"
    skipprune.export(nas_sources["llama"], out, plan, format="nemotron-nas")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert config["num_key_value_heads"] is None and config["intermediate_size"] is None
    blocks = config["block_configs"]
    assert len(blocks) == config["num_hidden_layers"] == len(plan.layers) == 5  # block 3 is simply absent
    assert isinstance(blocks[0]["ffn"]["ffn_mult"], float)  # llama.cpp's converter asserts this of layer 0
    for block, layer in zip(blocks, plan.layers):
        attention, ffn = block["attention"], block["ffn"]
        assert attention["no_op"] is (not layer.attention) and attention["replace_with_linear"] is False
        # llama.cpp reads only these: null means "no attention" / "no FFN"
        assert (attention["n_heads_in_group"] is None) is (not layer.attention)
        assert attention["n_heads_in_group"] in (None, 2)  # 4 heads, 2 KV heads
        zero = layer.attention and not layer.mlp
        assert ffn["no_op"] is (not layer.mlp and not zero) and (ffn["ffn_mult"] is None) is ffn["no_op"]
        if not ffn["no_op"]:
            assert engine_ffn_width(ffn["ffn_mult"], config["hidden_size"]) == (256 if zero else WIDTH)

    # What vLLM gets from AutoConfig: attributes, and the KV-head count it derives from the first attention.
    loaded = AutoConfig.from_pretrained(out, trust_remote_code=True)
    first = next(b for b in loaded.block_configs if not b.attention.no_op)
    assert loaded.num_attention_heads // first.attention.n_heads_in_group == 2
    assert hasattr(loaded.block_configs[0].ffn, "ffn_mult") and not hasattr(loaded.block_configs[0].ffn, "x")
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["block_configs"] == blocks and again["intermediate_size"] is None
    assert is_own_code(out, config)


@pytest.mark.parametrize(
    "hidden,width", [(4096, 11008), (4096, 14336), (8192, 28672), (2048, 5632), (2048, 8192), (5120, 13824)]
)
def test_ffn_mult_round_trips_real_widths(hidden, width):
    mult = ffn_mult_for(width, hidden)
    assert engine_ffn_width(mult, hidden) == width and engine_ffn_width(ffn_mult_for(256, hidden), hidden) == 256


def test_unrepresentable_width_and_others_are_refused(family_sources, nas_sources, tmp_path):
    out = tmp_path / "out"
    cases = [
        (family_sources["qwen2"], ["--drop-attn", "5"], "qwen2 cannot be written in it"),
        (family_sources["llama"], ["--drop-attn", "5"], "cannot be written as a DeciLM ffn_mult"),  # width 48
        (family_sources["mistral"], ["--drop-attn", "5"], "sliding-window attention"),
        (nas_sources["llama"], ["--drop-attn", "0"], "output layer 0 without attention"),
        (nas_sources["llama"], ["--adaptive-ffn", "default"], "adaptive FFN skipping"),
    ]
    for src, args, needle in cases:
        proc = run("export", src, out, "--format", "nemotron-nas", *args)
        assert_clean_failure(proc, needle, out)
    # Layer 0 without attention is fine once its MLP goes too (the block is removed whole).
    assert run("export", nas_sources["llama"], out, "--format", "nemotron-nas", "--drop-blocks", "0").returncode == 0


def test_card_says_how_to_serve(nas_sources, tmp_path):
    skipprune.export(nas_sources["llama"], tmp_path / "o", PLANS["mlp"], format="nemotron-nas")
    card = (tmp_path / "o" / "README.md").read_text()
    assert "vllm serve" in card and "convert_hf_to_gguf.py" in card and "all-zero" in card
    record = json.loads((tmp_path / "o" / "skipprune.json").read_text())
    assert "--format nemotron-nas" in record["command"]


def test_eval_runs_its_own_code_unasked(gguf_source, tmp_path):
    """skipprune's own code in the serving format is trusted as the default format's is; a changed file is not."""
    out = tmp_path / "o"
    skipprune.export(gguf_source, out, PLANS["mixed"], format="nemotron-nas")
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 20)
    proc = run("eval", out, "--no-speed", "--seq-len", "16", "--text", text)
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in proc.stdout
    with (out / "modeling_skipprune.py").open("a") as f:
        f.write("# changed\n")
    assert_clean_failure(run("eval", out, "--no-speed", "--text", text), "--trust-remote-code")


# -- llama.cpp ------------------------------------------------------------------------------------------------


def _llama_cpp_tree() -> Path | None:
    """The llama.cpp sources that `bash tests/engines/llama_cpp.sh` unpacked (or $SKIPPRUNE_LLAMA_CPP)."""
    if os.environ.get("SKIPPRUNE_LLAMA_CPP"):
        return Path(os.environ["SKIPPRUNE_LLAMA_CPP"])
    found = sorted((Path(__file__).parents[1] / ".engines").glob("llama_cpp_python-*/vendor/llama.cpp"))
    return found[-1] if found else None


def _llama_cpp_ready() -> bool:
    tree = _llama_cpp_tree()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return tree is not None and (tree / "convert_hf_to_gguf.py").is_file()


# CI sets SKIPPRUNE_REQUIRE_LLAMA_CPP=1: there a missing engine fails instead of skipping.
llama_cpp_only = pytest.mark.skipif(
    not _llama_cpp_ready() and os.environ.get("SKIPPRUNE_REQUIRE_LLAMA_CPP") != "1",
    reason="llama.cpp not set up: bash tests/engines/llama_cpp.sh",
)
PROMPT = [1, 17, 300, 45, 99, 250, 12, 400, 33, 7, 128, 64]
CONTINUATION = 32


@pytest.fixture(scope="module")
def gguf_source(tmp_path_factory):
    """A tiny llama with a tokenizer llama.cpp's converter accepts (BPE with byte fallback). Untied embeddings and
    a wider initialisation keep the random model from merely repeating its last token."""
    folder = tmp_path_factory.mktemp("gguf") / "src"
    text = (Path(skipprune.__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")
    return engine_model(folder, len(make_byte_fallback_tokenizer(folder, text)))


def engine_model(folder: Path, vocab_size: int) -> Path:
    """The tiny llama of the engine tests, beside its tokenizer in `folder`."""
    return make_model(
        folder,
        "llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=WIDTH,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )


def to_gguf(folder: Path) -> Path:
    assert _llama_cpp_ready(), "llama.cpp is not set up: bash tests/engines/llama_cpp.sh"
    tree, gguf = _llama_cpp_tree(), folder.parent / f"{folder.name}.gguf"
    env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    cmd = [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f32", "--outfile", str(gguf)]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return gguf


def run_llama_cpp(gguf: Path) -> tuple[torch.Tensor, list[int]]:
    """llama.cpp's logits for every prompt position, and its greedy continuation."""
    from llama_cpp import Llama

    # KV cache in f32 (llama.cpp defaults to f16), so both sides round alike
    llm = Llama(model_path=str(gguf), n_ctx=128, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    try:
        llm.eval(PROMPT)
        logits = torch.tensor(llm.scores[: len(PROMPT)])
        llm.reset()
        tokens = llm.generate(PROMPT, temp=0.0, top_k=1)
        continuation = [next(tokens) for _ in range(CONTINUATION)]
    finally:
        llm.close()
    return logits, continuation


def bypassed_greedy(src: Path, plan: PrunePlan) -> list[int]:
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad(), bypassed(ref, plan, anatomy_of("llama")):
        # no cache: the bypass hooks compute the source as it is, sublayers skipped
        ids = torch.tensor([PROMPT])
        for _ in range(CONTINUATION):
            ids = torch.cat([ids, ref(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(PROMPT) :].tolist()


@llama_cpp_only
@pytest.mark.parametrize("name", sorted(PLANS))
def test_llama_cpp_runs_the_export(name, gguf_source, tmp_path):
    plan, out = PLANS[name], tmp_path / name
    skipprune.export(gguf_source, out, plan, format="nemotron-nas")
    logits, continuation = run_llama_cpp(to_gguf(out))
    want = bypassed_logits(gguf_source, plan, "llama", torch.tensor([PROMPT]))[0]
    # f32 GGUF and f32 KV cache against fp32 torch: other kernels, the same arithmetic up to rounding (seen:
    # 4e-6 at logits of magnitude 3).
    assert (logits - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    greedy = bypassed_greedy(gguf_source, plan)
    assert continuation == greedy and len(set(greedy)) > CONTINUATION // 2  # a real continuation, not a loop


@llama_cpp_only
def test_llama_cpp_needs_the_zero_ffn(gguf_source, tmp_path):
    """Why the stand-ins exist: written as a true no-op, llama.cpp's DeciLM graph drops the attention of a
    layer without FFN, and computes something else (pinned llama-cpp-python 0.3.36)."""
    plan, out = PLANS["mlp"], tmp_path / "noop"
    skipprune.export(gguf_source, out, plan, format="nemotron-nas", verify_numerics=False)
    config = json.loads((out / "config.json").read_text())
    for i in skipprune.ExportRecord.load(out).zero_ffn_layers:
        config["block_configs"][i]["ffn"].update(no_op=True, ffn_mult=None)
    (out / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    zero = {f"model.layers.{i}." for i in skipprune.ExportRecord.load(out).zero_ffn_layers}
    tensors = load_file(out / "model.safetensors")
    kept = {k: v for k, v in tensors.items() if not any(k.startswith(z) and ".mlp." in k for z in zero)}
    kept = {k: v for k, v in kept.items() if not any(k.startswith(z + "post_attention") for z in zero)}
    save_file(kept, out / "model.safetensors", metadata={"format": "pt"})
    logits, _ = run_llama_cpp(to_gguf(out))
    want = bypassed_logits(gguf_source, plan, "llama", torch.tensor([PROMPT]))[0]
    assert (logits - want).abs().max().item() > 0.05
