"""eval / analyze / sweep through accelerate's device_map, exercised on CPU: a `max_memory` of 1 MiB pushes
every weight to disk, read back when its module runs. Results equal the same model in memory, same dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

import skipprune
from skipprune.cli import main
from skipprune.data import DEMO_MODEL, HELDOUT
from skipprune.measure.importance import measure_importance
from skipprune.measure.perplexity import perplexity
from skipprune.measure.sweep import run_sweep
from skipprune.measure.text import token_windows

from common import assert_clean_failure, run
from tiny import anatomy_of

OFFLOAD = {"device_map": "auto", "max_memory": "cpu=1MiB"}


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(HELDOUT.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def in_memory():
    """The demo model in its checkpoint dtype (bf16), whole, and 4 windows of 64 tokens of the text."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype="auto").eval()
    return model, tokenizer


def test_eval_with_everything_on_disk(tmp_path, text, in_memory):
    model, tokenizer = in_memory
    results = skipprune.evaluate(str(DEMO_MODEL), text=str(text), seq_len=64, speed=False, **OFFLOAD)
    want, protocol = perplexity(model, token_windows(tokenizer, text.read_text(), 64), "x")
    assert results.perplexity == want and results.perplexity_protocol.windows == protocol.windows
    assert results.params == sum(p.numel() for p in model.parameters())


def test_analyze_with_everything_on_disk(text, in_memory):
    model, tokenizer = in_memory
    analysis = skipprune.analyze(str(DEMO_MODEL), text=str(text), samples=3, seq_len=64, **OFFLOAD)
    want = measure_importance(model, anatomy_of("llama"), token_windows(tokenizer, text.read_text(), 64, 3))
    assert analysis.importance.block_cos == want.block_cos and analysis.importance.tokens == 3 * 64


def test_sweep_with_everything_on_disk(tmp_path, text, in_memory):
    model, tokenizer = in_memory
    args = ["sweep", str(DEMO_MODEL), "--text", str(text), "--samples", "2", "--seq-len", "64", "--no-speed"]
    offload = ["--device-map", "auto", "--max-memory", "cpu=1MiB", "--json", str(tmp_path / "s.json")]
    res = CliRunner().invoke(main, args + offload)
    assert res.exit_code == 0, res.output
    offloaded = json.loads((tmp_path / "s.json").read_text())
    windows = token_windows(tokenizer, text.read_text(), 64, 2)
    rows = run_sweep(model, anatomy_of("llama"), lambda m: (*perplexity(m, windows, "x"), {}), with_speed=False)
    assert len(offloaded) == len(rows) == 19
    for a, b in zip(offloaded, rows):
        assert (a["removed_layers"], a["perplexity"]) == (b.removed_layers, b.perplexity)


def test_bad_max_memory():
    proc = run("eval", DEMO_MODEL, "--no-speed", "--device-map", "auto", "--max-memory", "lots")
    assert_clean_failure(proc, "bad --max-memory item")


def test_lm_eval_on_the_dispatched_model(tmp_path, text):
    pytest.importorskip("lm_eval")
    data = Path(__file__).parent / "data"
    task = tmp_path / "tiny_task.yaml"
    task.write_text((data / "tiny_task.yaml.in").read_text().replace("DATA_FILE", str(data / "tiny_task.jsonl")))
    results = skipprune.evaluate(str(DEMO_MODEL), text=str(text), seq_len=64, speed=False, tasks=[str(task)], **OFFLOAD)
    score = results.tasks["skipprune_tiny_mc"]
    assert score.metric == "acc" and 0 <= score.value <= 1 and score.local


def test_max_memory_needs_a_device_map():
    assert_clean_failure(run("analyze", DEMO_MODEL, "--max-memory", "cpu=1GiB"), "only applies with --device-map")


@pytest.mark.parametrize(
    "placement, mode",
    [
        (OFFLOAD, "dispatched by accelerate (auto)"),
        ({"device_map": "stream"}, "streamed from disk by accelerate"),
    ],
)
def test_export_verification_placed_as_asked(placement, mode, tmp_path):
    result = skipprune.export(DEMO_MODEL, tmp_path / "out", drop_attn="last:3", **placement)
    check = result.record.verification.numerics
    assert (check.mode, check.dtype, check.max_abs_logit_diff) == (mode, "bfloat16", 0.0)


def test_export_max_memory_needs_a_device_map(tmp_path):
    proc = run("export", DEMO_MODEL, tmp_path / "out", "--drop-attn", "2", "--max-memory", "cpu=1GiB")
    assert_clean_failure(proc, "--max-memory only applies with --device-map", tmp_path / "out")
