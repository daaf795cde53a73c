"""skipprune heal: only trainable weights change, the output loads and verifies, zero steps is the pruned model
bit for bit, scores are never on the healing text, interruption leaves nothing."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.data import DEMO_MODEL, HELDOUT
from skipprune.errors import MeasureError
from skipprune.heal import heal

from common import assert_clean_failure, digest, run, tensors


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("heal")
    skipprune.export(DEMO_MODEL, root / "pruned", drop_attn="last:2", drop_blocks="9")
    text = root / "train.txt"
    heldout = HELDOUT.read_text(encoding="utf-8")
    # a text that is not the held-out split: the held-out lines reversed in order, word by word
    text.write_text("\n".join(" ".join(reversed(line.split())) for line in heldout.splitlines()[:600]))
    return root / "pruned", text


def quick_heal(folder, out, text, **options):
    """heal() at toy sizes (next-token loss unless told otherwise)."""
    return heal(
        folder, out, text=str(text), **{"method": "lm", "seq_len": 32, "batch": 2, "score_windows": 2, **options}
    )


def test_lora_changes_only_the_adapted_weights(pruned, tmp_path):
    folder, text = pruned
    result = quick_heal(folder, tmp_path / "h", text, steps=3, lr=1e-3, score_windows=4)
    before, after = tensors(folder), tensors(tmp_path / "h")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("proj.weight") and ".layers." in k for k in changed)  # linear layers only
    assert all(before[k].dtype == after[k].dtype and before[k].shape == after[k].shape for k in before)
    record = result.record
    assert record.healing.tensors_trained == len(changed) and record.healing.lora_rank == 8
    assert record.verification.numerics is None and "healed" in record.verification.numerics_skipped
    assert record.plan == skipprune.ExportRecord.load(folder).plan
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "h", trust_remote_code=True)  # loads as before
    assert model.config.layer_has_attention == json.loads((folder / "config.json").read_text())["layer_has_attention"]
    card = (tmp_path / "h" / "README.md").read_text()
    assert "## Healing" in card and "| healed |" in card and "byte-identical to the pruned export" in card


def test_zero_steps_is_the_pruned_model_bit_for_bit(pruned, tmp_path):
    folder, text = pruned
    quick_heal(folder, tmp_path / "h", text, steps=0)
    before, after = tensors(folder), tensors(tmp_path / "h")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)


def test_distill_and_full(pruned, tmp_path):
    folder, text = pruned
    result = quick_heal(
        folder, tmp_path / "h", text, method="distill", teacher=str(DEMO_MODEL), steps=2, lora_rank=None, lr=1e-2
    )
    h = result.record.healing
    assert h.method == "distill" and h.lora_rank is None and h.teacher == "demo-model"  # a name, never a path
    assert str(DEMO_MODEL) not in (tmp_path / "h" / "README.md").read_text()
    assert set(h.perplexity) == {"source", "pruned", "healed"}
    changed = {k for k, v in tensors(folder).items() if not torch.equal(v, tensors(tmp_path / "h")[k])}
    # full fine-tuning trains every block weight, norms included (updates big enough to survive bf16 storage)
    assert any("norm" in k for k in changed)
    assert not any("embed_tokens" in k or "lm_head" in k for k in changed)


def test_refusals(pruned, tmp_path):
    folder, text = pruned
    out = tmp_path / "h"
    before = digest(folder)
    cases = [
        (["--text", HELDOUT], "overlaps the healing text"),  # scores would be on training data
        (["--text", "bundled"], "held-out split"),
        (["--text", text], "needs the model"),  # distill without a teacher (a local source)
        (["--text", text, "--method", "lm", "--steps", "1", "--tokens", "10"], "not both"),
        (["--text", tmp_path / "nothere.txt"], "pass a UTF-8 text file or 'wikitext2'"),  # not 'bundled'
    ]
    for args, needle in cases:
        assert_clean_failure(run("heal", folder, out, *args), needle, out)
    assert digest(folder) == before


def test_missing_peft_is_reported_before_loading(pruned, tmp_path, monkeypatch):
    folder, text = pruned
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before peft was checked")

    monkeypatch.setattr(importlib.import_module("skipprune.heal"), "prepare", no_loading)  # the module, not heal()
    with pytest.raises(MeasureError, match="needs peft"):
        quick_heal(folder, tmp_path / "h", text, steps=1)


def test_cli_heal(pruned, tmp_path):
    folder, text = pruned
    proc = run(
        "heal",
        folder,
        tmp_path / "h",
        "--text",
        text,
        "--method",
        "lm",
        "--steps",
        "1",
        "--seq-len",
        "32",
        "--batch",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "held-out perplexity (32-token windows): pruned" in proc.stdout and "held-out perplexity" not in proc.stderr
    )  # said once
    # no terminal, so no bar: progress lines instead, and the last loss
    assert "healing: step 1 of 1, loss" in proc.stderr and "healed: 1 step in" in proc.stderr
    assert (tmp_path / "h" / "skipprune.json").is_file() and not list(tmp_path.glob(".h.skipprune-*"))
    card = (tmp_path / "h" / "README.md").read_text()
    heal_command = "skipprune heal pruned h --text train.txt --method lm --steps 1 --lora-rank 8 --seq-len 32 --batch 2"
    assert heal_command in card.split("## Reproduce")[1]  # after the export command
    assert "which healing never saw" in card and "(never trained on) (never trained on)" not in card
    assert "Not measured yet" not in card and "perplexity (32-token windows)" in card


def test_device_map_through_accelerate(pruned, tmp_path):
    """--device-map hands placement to accelerate (here: everything on the CPU, in the checkpoint dtype)."""
    folder, text = pruned
    result = quick_heal(folder, tmp_path / "h", text, steps=1, lr=1e-3, device_map="auto", max_memory="cpu=4GiB")
    assert result.record.healing.steps == 1 and (tmp_path / "h" / "model.safetensors").is_file()


def test_serving_format_keeps_its_zero_ffns(pruned, tmp_path):
    """Healing a serving-format export trains the real weights but leaves its all-zero FFNs zero."""
    _, text = pruned
    folder = tmp_path / "nas"
    record = skipprune.export(DEMO_MODEL, folder, drop_mlp="last:2", format="nemotron-nas").record
    assert record.zero_ffn_layers == [10, 11]
    quick_heal(folder, tmp_path / "h", text, steps=2, lr=1e-2)
    after = tensors(tmp_path / "h")
    zero = [k for k in after if k.startswith(("model.layers.10.mlp.", "model.layers.11.mlp."))]
    assert len(zero) == 6 and all(not after[k].any() for k in zero)
    before = tensors(folder)
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])
    assert json.loads((tmp_path / "h" / "config.json").read_text())["model_type"] == "nemotron-nas"


def test_a_model_too_large_to_train_is_refused(pruned, tmp_path, monkeypatch):
    """Measuring streams a model that does not fit (tests/test_stream.py); training cannot: one line, the way out."""
    import importlib

    folder, text = pruned
    monkeypatch.setattr(importlib.import_module("skipprune.measure.runner"), "available_memory", lambda: 1 << 20)
    with pytest.raises(MeasureError, match="does not fit .*--device-map auto"):
        quick_heal(folder, tmp_path / "out", text, steps=1)
    assert not (tmp_path / "out").exists()
