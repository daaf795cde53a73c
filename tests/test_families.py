"""Every family: exported logits equal the bypassed source, cache behaves, kept bytes are identical."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.measure.speed import cache_of
from skipprune.prune.bypass import bypassed
from skipprune.prune.plan import PrunePlan

from tiny import FAMILY_NAMES, anatomy_of, inputs

N = 6


def random_plan(rng: random.Random) -> PrunePlan:
    """Random valid plan: any mix of removed attention / MLP / blocks, keeping some attention."""
    while True:
        attn = {i for i in range(N) if rng.random() < 0.4}
        mlp = {i for i in range(N) if rng.random() < 0.4}
        plan = PrunePlan(N, attn, mlp)
        if (attn or mlp) and len(plan.dropped_blocks) < N and any(layer.attention for layer in plan.layers):
            return plan


PLANS = [(fam, seed) for fam in FAMILY_NAMES for seed in range(3)]


def reference_logits(src, plan, family, ids, mask, **load):
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=load.pop("dtype", torch.float32), **load)
    with torch.no_grad(), bypassed(ref, plan, anatomy_of(family)):
        return ref(input_ids=ids, attention_mask=mask).logits


def load_export(out, **kw):
    return AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, **{"dtype": torch.float32, **kw})


@pytest.mark.parametrize("family,seed", PLANS)
def test_random_plan_matches_bypassed_source(family, seed, family_sources, tmp_path):
    src = family_sources[family]
    plan = random_plan(random.Random(f"{family}-{seed}"))
    out = tmp_path / "out"
    result = skipprune.export(src, out, plan)
    assert result.record.verification.numerics.max_abs_logit_diff <= 1e-5

    ids, mask = inputs()
    want = reference_logits(src, plan, family, ids, mask)
    model = load_export(out)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        unpadded = model(input_ids=ids[:1]).logits
    real = mask.bool()
    assert (got - want)[real].abs().max().item() <= 1e-5
    assert (unpadded[0] - want[0]).abs().max().item() <= 1e-5

    # Removed tensors are physically absent; kept ones are byte-identical under their new names.
    fam = anatomy_of(family)
    with safe_open(src / "model.safetensors", "pt") as s, safe_open(out / "model.safetensors", "pt") as o:
        out_names = set(o.keys())
        for layer in plan.layers:
            for name in s.keys():
                prefix = f"model.layers.{layer.source}."
                if not name.startswith(prefix):
                    continue
                child = name[len(prefix) :].split(".")[0]
                new = f"model.layers.{layer.output}.{name[len(prefix) :]}"
                removed = (child in fam.attention and not layer.attention) or (child in fam.mlp and not layer.mlp)
                if removed:
                    assert new not in out_names
                else:
                    a, b = s.get_tensor(name), o.get_tensor(new)
                    assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        assert not any(f"model.layers.{len(plan.layers)}." in n for n in out_names)
    assert result.record.bytes.output < result.record.bytes.source


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_cache_and_generation(family, family_sources, tmp_path):
    """Cached greedy decoding equals uncached; layers without attention hold no KV bytes."""
    src = family_sources[family]
    # Layer 0 loses attention: the case where naive cache handling restarts positions.
    plan = PrunePlan(N, {0, 3}, {4})
    skipprune.export(src, tmp_path / "o", plan)
    model = load_export(tmp_path / "o")
    prompt = torch.tensor([[5, 17, 42, 9, 77, 3, 11, 64, 23, 8]])
    kw = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        uncached = model.generate(prompt, use_cache=False, **kw)
        assert torch.equal(cached, uncached)

        out = model(input_ids=prompt[:, :6], use_cache=True)  # shorter than every sliding window
        kv = [c.keys.numel() * c.keys.element_size() * 2 for c in cache_of(out).layers]
    # a slot for each layer that kept its attention, and none for the others
    assert len(kv) == sum(layer.attention for layer in plan.layers) and all(kv), kv
    per_layer = set(kv)
    assert len(per_layer) == 1  # every attention layer stores the same (prompt shorter than any window)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_blocks_only_export_is_stock(family, family_sources, tmp_path):
    src = family_sources[family]
    plan = PrunePlan.from_specs(N, drop_blocks="1,last:2")
    skipprune.export(src, tmp_path / "o", plan)
    out = tmp_path / "o"
    assert not (out / "modeling_skipprune.py").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # no remote code needed
    assert model.config.model_type == family and model.config.num_hidden_layers == 3
    ref_types = getattr(AutoModelForCausalLM.from_pretrained(src).config, "layer_types", None)
    if ref_types is not None:
        assert model.config.layer_types == [ref_types[i] for i in (0, 2, 3)]
    ids, mask = inputs()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    want = reference_logits(src, plan, family, ids, mask)
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


def test_plain_load_without_remote_code_fails(family_sources, tmp_path):
    skipprune.export(family_sources["llama"], tmp_path / "o", drop_attn="last:2")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "o", trust_remote_code=False)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bf16_and_attention_implementations(family, attn, tmp_path):
    from tiny import make_model

    src = make_model(tmp_path / "src", family, dtype=torch.bfloat16)
    plan = PrunePlan(N, {2, 4}, {5})
    skipprune.export(src, tmp_path / "o", plan)
    ids, mask = inputs()
    try:
        want = reference_logits(src, plan, family, ids, mask, dtype=torch.bfloat16, attn_implementation=attn)
    except ValueError:  # the stock family refuses this kernel (gemma2 + sdpa): so must the export
        with pytest.raises(ValueError, match="attention implementation"):
            load_export(tmp_path / "o", dtype=torch.bfloat16, attn_implementation=attn)
        return
    model = load_export(tmp_path / "o", dtype=torch.bfloat16, attn_implementation=attn)
    assert model.config.text_config._attn_implementation == attn
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got[mask.bool()], want[mask.bool()])


def test_device_map_auto_and_gradient_checkpointing(family_sources, tmp_path):
    skipprune.export(family_sources["qwen3"], tmp_path / "o", drop_attn="2-3", drop_mlp="5")
    ids, _ = inputs()
    plain = load_export(tmp_path / "o")
    mapped = load_export(tmp_path / "o", device_map="auto")
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, mapped(input_ids=ids).logits)

    def grads(model):
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    base = grads(plain)
    plain.gradient_checkpointing_enable()
    checkpointed = grads(plain)
    assert base.keys() == checkpointed.keys() and len(base) > 0
    assert all(torch.allclose(base[n], checkpointed[n], atol=1e-6) for n in base)
