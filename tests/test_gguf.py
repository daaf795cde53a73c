"""`skipprune gguf`: exports of a model with a GPT-2-style byte-level BPE tokenizer (a vocabulary llama.cpp has
never seen) converted by llama.cpp's own converter and run by llama.cpp: same tokens, same logits, same greedy
continuation as transformers on the bypassed source; and the inputs it refuses, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_serving import (
    CONTINUATION,
    PLANS,
    PROMPT,
    bypassed_greedy,
    bypassed_logits,
    engine_model,
    llama_cpp_only,
    run_llama_cpp,
)
from transformers import AutoTokenizer

import skipprune
from skipprune.prune.plan import PrunePlan

from common import assert_clean_failure, run
from tiny import make_byte_level_tokenizer, make_model

TEXT = (Path(skipprune.__file__).parent / "data" / "heldout.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe") / "src"
    return engine_model(folder, len(make_byte_level_tokenizer(folder, TEXT)))


PLANS_AND_BLOCKS = {**PLANS, "blocks": PrunePlan(6, {2, 4}, {2, 4})}


@llama_cpp_only
@pytest.mark.parametrize("name", sorted(PLANS_AND_BLOCKS))
def test_gguf_of_a_byte_level_bpe_model_runs_in_llama_cpp(name, bpe_source, tmp_path):
    plan, out = PLANS_AND_BLOCKS[name], tmp_path / name
    skipprune.export(bpe_source, out, plan, format="default" if plan.blocks_only else "nemotron-nas")
    proc = run("gguf", out, tmp_path / "m.gguf", "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("m.gguf") and not list(tmp_path.glob(".m.gguf*"))
    logits, continuation = run_llama_cpp(tmp_path / "m.gguf")
    want = bypassed_logits(bpe_source, plan, "llama", torch.tensor([PROMPT]))[0]
    assert (logits - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    greedy = bypassed_greedy(bpe_source, plan)
    assert continuation == greedy and len(set(greedy)) > CONTINUATION // 4  # not a loop of a few tokens


@llama_cpp_only
def test_llama_cpp_tokenizes_text_as_transformers_does(bpe_source, tmp_path):
    from llama_cpp import Llama

    skipprune.export(bpe_source, tmp_path / "out", PLANS["attention"], format="nemotron-nas")
    gguf = skipprune.to_gguf(tmp_path / "out", tmp_path / "m.gguf", "f32")
    text = TEXT[:2000]
    llm = Llama(model_path=str(gguf), n_ctx=64, vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(text.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    assert got == AutoTokenizer.from_pretrained(bpe_source)(text)["input_ids"]


@llama_cpp_only
def test_unknown_pre_tokenizers_still_stop_in_one_line(tmp_path):
    folder = tmp_path / "src"
    tokenizer = make_byte_level_tokenizer(folder, TEXT, add_prefix_space=True)  # not GPT-2's
    make_model(folder, "llama", vocab_size=len(tokenizer), intermediate_size=256)
    skipprune.export(folder, tmp_path / "out", PLANS["attention"], format="nemotron-nas")
    proc = run("gguf", tmp_path / "out", tmp_path / "m.gguf")
    assert_clean_failure(proc, "pre-tokenizer was not recognized")
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".m.gguf*"))


def test_bad_input_is_refused_in_one_line(bpe_source, tmp_path):
    skipprune.export(bpe_source, tmp_path / "wrapped", PLANS["attention"])  # skipprune's own modeling code
    assert_clean_failure(run("gguf", tmp_path / "wrapped", tmp_path / "m.gguf"), "--format nemotron-nas")
    assert_clean_failure(run("gguf", tmp_path / "nothere", tmp_path / "m.gguf"), "is not a folder")
    assert_clean_failure(run("gguf", bpe_source, tmp_path, "--converter", tmp_path), "is a folder")
    (tmp_path / "there.gguf").write_bytes(b"mine")
    assert_clean_failure(run("gguf", bpe_source, tmp_path / "there.gguf"), "--overwrite")
    assert (tmp_path / "there.gguf").read_bytes() == b"mine"
    proc = run("gguf", bpe_source, tmp_path / "m.gguf", "--converter", tmp_path / "no-llama")
    assert_clean_failure(proc, "needs a llama.cpp tree")
    assert "git clone https://github.com/ggml-org/llama.cpp" in proc.stderr
