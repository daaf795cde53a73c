"""Input-adaptive FFN skipping (FFN-SkipLLM) in exported models."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.prune.bypass import bypassed
from skipprune.prune.plan import PrunePlan

from common import assert_clean_failure, run
from tiny import anatomy_of

PROMPT = torch.tensor([[5, 17, 42, 9, 77, 3, 11, 64]])
GEN = dict(do_sample=False, pad_token_id=0)


def settings(**kw):
    return {"cold_start": 1, "cold_end": 1, "sim_threshold": 2.0, "warmup_tokens": 0, "max_skips": 1, **kw}


def load(path, **kw):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32, **kw)


@pytest.fixture
def plain_and_adaptive(family_sources, tmp_path, request):
    family = getattr(request, "param", "llama")
    src = family_sources[family]
    skipprune.export(src, tmp_path / "plain", drop_attn="5")
    skipprune.export(src, tmp_path / "adaptive", drop_attn="5", adaptive_ffn=settings())
    return family, tmp_path / "plain", tmp_path / "adaptive"


def test_never_triggering_equals_plain_and_counts(plain_and_adaptive):
    _, plain, adaptive = plain_and_adaptive
    config = json.loads((adaptive / "config.json").read_text())
    assert (
        config["adaptive_ffn_skip"]["sim_threshold"] == 2.0 and config["mlp_input_module"] == "post_attention_layernorm"
    )
    a = load(adaptive, adaptive_ffn_skip=settings(warmup_tokens=3))
    with torch.no_grad():
        want = load(plain).generate(PROMPT, max_new_tokens=12, min_new_tokens=12, **GEN)
        got = a.generate(PROMPT, max_new_tokens=12, min_new_tokens=12, **GEN)
    assert torch.equal(got, want)
    # 11 decode steps (the first token comes from the prompt pass), 3 of warm-up, 4 eligible layers (1-4).
    assert a.ffn_skip_stats == {"skipped": 0, "eligible": (11 - 3) * 4, "ratio": 0.0}


@pytest.mark.parametrize("plain_and_adaptive", ["llama", "olmo2", "gemma2"], indirect=True)
def test_a_skipping_step_equals_the_bypassed_plain_model(plain_and_adaptive):
    """threshold -1 (always reached), max_skips 1: layers 1 and 3 check, 2 and 4 are skipped, every token."""
    family, plain, adaptive = plain_and_adaptive
    a = load(adaptive, adaptive_ffn_skip=settings(sim_threshold=-1.0))
    ref = load(plain)
    with torch.no_grad():
        got = a(input_ids=PROMPT, use_cache=True)
        want = ref(input_ids=PROMPT, use_cache=True)
        assert torch.equal(got.logits, want.logits)  # prompts are computed in full
        step = got.logits[:, -1:].argmax(-1)
        got = a(input_ids=step, past_key_values=got.past_key_values, use_cache=True).logits
        with bypassed(ref, PrunePlan(6, set(), {2, 4}), anatomy_of(family)):
            want = ref(input_ids=step, past_key_values=want.past_key_values, use_cache=True).logits
    assert torch.equal(got, want)
    with torch.no_grad():
        a.generate(PROMPT, max_new_tokens=6, min_new_tokens=6, **GEN)  # random models may emit EOS early
    assert a.ffn_skip_stats == {"skipped": 5 * 2, "eligible": 5 * 4, "ratio": 0.5}


def test_off_by_default_and_batch_policy(plain_and_adaptive):
    _, plain, adaptive = plain_and_adaptive
    assert load(plain).ffn_skip is None  # null / absent: no hooks at all, bit-identical to the plain export
    a = load(adaptive, adaptive_ffn_skip=settings(sim_threshold=-1.0, max_skips=2))
    batch = torch.tensor([[0, 0, 5, 17, 42, 9], [8, 6, 7, 5, 3, 9]])
    with torch.no_grad():
        a.generate(batch, attention_mask=(batch != 0).long(), max_new_tokens=5, min_new_tokens=5, **GEN)
    # Shared decision over the batch: per step, layer 1 checks, 2-3 skipped, 4 checks.
    assert a.ffn_skip_stats == {"skipped": 4 * 2, "eligible": 4 * 4, "ratio": 0.5}


def test_blocks_only_with_adaptive_uses_the_skipprune_architecture(family_sources, tmp_path):
    skipprune.export(family_sources["qwen2"], tmp_path / "o", drop_blocks="5", adaptive_ffn="default")
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["model_type"] == "skipprune" and config["adaptive_ffn_skip"]["max_skips"] == 2
    assert "`max_skips=2`" in (tmp_path / "o" / "README.md").read_text()
    skipprune.export(family_sources["qwen2"], tmp_path / "empty", adaptive_ffn="cold_start=1")
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["adaptive_ffn_skip"]["cold_start"] == 1


def test_bad_settings(family_sources, tmp_path):
    proc = run("export", family_sources["llama"], tmp_path / "o", "--adaptive-ffn", "speed=11")
    assert_clean_failure(proc, "bad --adaptive-ffn item", tmp_path / "o")
    proc = run("export", family_sources["llama"], tmp_path / "o", "--adaptive-ffn", "max_skips=two")
    assert_clean_failure(proc, "takes a number", tmp_path / "o")
