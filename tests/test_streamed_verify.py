"""Logit verification of models that do not fit in memory: weights streamed from disk by accelerate."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import skipprune
from skipprune.cli import main
from skipprune.errors import VerificationError
from skipprune.export.source import open_source
from skipprune.prune.plan import PrunePlan

from tiny import FAMILY_NAMES, anatomy_of

verify = importlib.import_module("skipprune.export.verify")
pipeline = importlib.import_module("skipprune.export.pipeline")
PLAN = PrunePlan(6, {0, 3}, {3, 5})


@pytest.fixture
def too_large(monkeypatch):
    """Make every model look too large for the in-memory check."""
    monkeypatch.setattr(verify, "fits_in_memory", lambda src, available: False)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_streamed_verification_on_every_family(family, family_sources, tmp_path, too_large):
    result = skipprune.export(family_sources[family], tmp_path / "out", PLAN)
    check = result.record.verification.numerics
    assert check.mode == "streamed from disk by accelerate" and check.dtype == "float32"
    assert check.max_abs_logit_diff == 0.0
    assert "streamed from disk" in (tmp_path / "out" / "README.md").read_text()


def test_streamed_verification_in_the_converted_dtype(family_sources, tmp_path, too_large):
    result = skipprune.export(family_sources["qwen3"], tmp_path / "out", PLAN, dtype="bfloat16")
    check = result.record.verification.numerics
    assert check.dtype == "bfloat16" and check.max_abs_logit_diff == 0.0


def _swap_layers(tensors):
    """A layout bug: layers 1 and 2 of the source trade places (names, shapes and bytes stay plausible)."""
    by_name = {t.name: t for t in tensors}
    out = []
    for t in tensors:
        for a, b in (("model.layers.1.", "model.layers.2."), ("model.layers.2.", "model.layers.1.")):
            if t.name.startswith(a) and b + t.name[len(a) :] in by_name:
                t = dataclasses.replace(t, source=by_name[b + t.name[len(a) :]].source)
                break
        out.append(t)
    return out


def test_a_layout_bug_is_caught_and_nothing_is_published(family_sources, tmp_path, too_large, monkeypatch):
    real = pipeline.layout.map_tensors
    monkeypatch.setattr(pipeline.layout, "map_tensors", lambda *a, **k: _swap_layers(real(*a, **k)))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["export", str(family_sources["llama"]), str(out), "--drop-attn", "4"])
    assert res.exit_code == 1 and "exported logits differ from the bypassed source" in res.output
    assert not out.exists() and not list(tmp_path.glob(".out.skipprune-*"))


def _tamper_tensor(out):
    shard = load_file(out / "model.safetensors")
    shard["model.layers.1.mlp.up_proj.weight"] += 0.01
    save_file(shard, out / "model.safetensors", metadata={"format": "pt"})


def _tamper_flag(out):
    config = json.loads((out / "config.json").read_text())
    config["layer_has_mlp"][2] = False
    (out / "config.json").write_text(json.dumps(config))


def _drop_norm(out):
    shard = load_file(out / "model.safetensors")
    del shard["model.layers.1.pre_feedforward_layernorm.weight"]
    save_file(shard, out / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("tamper", [_tamper_tensor, _tamper_flag, _drop_norm], ids=["tensor", "flag", "norm"])
def test_the_streamed_verifier_fails_a_wrong_export(tamper, family_sources, tmp_path):
    src = family_sources["gemma2"]
    plan = PrunePlan(6, {2}, set())
    skipprune.export(src, tmp_path / "out", plan, verify_numerics=False)
    tamper(tmp_path / "out")
    caught = "lacks .*pre_feedforward_layernorm" if tamper is _drop_norm else "exported logits differ"
    for streamed in (True, False):
        with pytest.raises(VerificationError, match=caught):
            verify.verify_numerics(
                tmp_path / "out", open_source(str(src)), plan, anatomy_of("gemma2"), streamed=streamed
            )


def test_streamed_and_in_memory_agree(family_sources, tmp_path):
    src, out = family_sources["olmo2"], tmp_path / "out"
    skipprune.export(src, out, PLAN, verify_numerics=False)
    args = (out, open_source(str(src)), PLAN, anatomy_of("olmo2"))
    streamed, in_memory = verify.verify_numerics(*args, streamed=True), verify.verify_numerics(*args)
    assert streamed.max_abs_logit_diff == in_memory.max_abs_logit_diff == 0.0
    assert (streamed.tokens, streamed.dtype) == (in_memory.tokens, in_memory.dtype) == (28, "float32")


def test_block_progress_bars_leave_the_computation_alone(family_sources, monkeypatch):
    """Each block's bar tick is a forward pre-hook: whatever the bar returns must not replace the block's
    inputs. tqdm returns True from update() once it draws, so draw on every update here."""
    import io

    import tqdm.auto
    from transformers import AutoModelForCausalLM

    from skipprune.system import block_progress

    class Eager(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(
                *args, **{**kwargs, "disable": False, "mininterval": 0, "miniters": 1, "file": io.StringIO()}
            )

    monkeypatch.setattr(tqdm.auto, "tqdm", Eager)
    model = AutoModelForCausalLM.from_pretrained(family_sources["llama"], dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with block_progress(model.model.layers, "check") as bar:
            got = model(input_ids=ids).logits
            assert bar.n == 6 and isinstance(bar, Eager)
    assert torch.equal(got, want)
