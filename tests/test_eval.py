"""`skipprune eval` on the bundled demo model and an export of it (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import skipprune
from skipprune.cli import main
from skipprune.data import DEMO_MODEL as MODEL
from skipprune.data import HELDOUT

from common import assert_clean_failure, run


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "pruned"
    skipprune.export(MODEL, out, drop_attn="last:25%")
    return out


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(HELDOUT.read_text(encoding="utf-8")[:12000], encoding="utf-8")
    return path


def eval_args(demo_export, short_text, *extra):
    base = ["eval", demo_export, "--baseline", MODEL, "--text", short_text, "--seq-len", "128", "--no-speed"]
    return [str(a) for a in (*base, *extra)]


def test_eval_with_baseline_json(demo_export, short_text, tmp_path):
    out_json = tmp_path / "r.json"
    res = CliRunner().invoke(main, eval_args(demo_export, short_text, "--json", out_json))
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    for key in (
        "schema_version",
        "model",
        "perplexity",
        "perplexity_protocol",
        "params",
        "disk_bytes",
        "kv_bytes_per_token",
        "speed",
        "tasks",
        "baseline",
    ):
        assert key in data
    base = data["baseline"]
    assert data["kv_bytes_per_token"] * 4 == base["kv_bytes_per_token"] * 3  # 9 of 12 layers keep attention
    assert data["params"] < base["params"] and data["disk_bytes"] < base["disk_bytes"]
    proto = data["perplexity_protocol"]
    assert proto["seq_len"] == 128 and proto["predicted_tokens"] == proto["windows"] * 127
    assert data["perplexity"] > base["perplexity"] > 1  # removing attention costs something on a trained model
    assert "KV cache per token" in res.output and "0.750" in res.output


def test_eval_speed_is_interleaved_and_recorded(demo_export, short_text):
    res = skipprune.evaluate(str(demo_export), str(MODEL), text=str(short_text), seq_len=128)
    for d in (res, res.baseline):
        assert [(p.batch, p.prompt_tokens) for p in d.speed.latency] == [(8, 50), (8, 100)]
        assert all(p.seconds > 0 for p in d.speed.latency) and d.speed.decode_tokens_per_s > 0
        assert all(p.spread >= 0 for p in d.speed.latency) and d.speed.decode_spread >= 0  # the noise is kept too
        assert d.speed.device == "cpu" and d.speed.dtype == "float32"


def test_foreign_remote_code_needs_opt_in(demo_export, tmp_path):
    tampered = shutil.copytree(demo_export, tmp_path / "tampered")
    with open(tampered / "modeling_skipprune.py", "a") as f:
        f.write("\n# changed by someone else\n")
    assert_clean_failure(run("eval", tampered, "--no-speed"), "--trust-remote-code")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--text", "missing.txt"], "no such file"),
        (["--seq-len", "100000"], "--seq-len 100000"),
        (["--device", "cuda"], "no CUDA device"),
    ],
)
def test_eval_bad_input(args, needle):
    assert_clean_failure(run("eval", MODEL, "--no-speed", *args), needle)


def test_text_shorter_than_a_window(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("To be, or not to be.")
    assert_clean_failure(run("eval", MODEL, "--no-speed", "--text", tiny, "--seq-len", "256"), "fewer than one window")


def test_tasks_without_lm_eval_say_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    res = CliRunner().invoke(main, ["eval", str(MODEL), "--no-speed", "--tasks", "hellaswag"])
    assert res.exit_code == 1 and "pip install 'skipprune[lm-eval]'" in res.output


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """The shipped local lm-eval task, with the absolute data path lm-eval's json loader needs."""
    data = Path(__file__).parent / "data"
    path = tmp_path_factory.mktemp("task") / "tiny_task.yaml"
    path.write_text((data / "tiny_task.yaml.in").read_text().replace("DATA_FILE", str(data / "tiny_task.jsonl")))
    return path


def test_lm_eval_local_task_in_memory(demo_export, short_text, tiny_task, tmp_path):
    pytest.importorskip("lm_eval")
    out_json = tmp_path / "r.json"
    res = CliRunner().invoke(main, eval_args(demo_export, short_text, "--tasks", tiny_task, "--json", out_json))
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    for d in (data, data["baseline"]):
        task = d["tasks"]["skipprune_tiny_mc"]
        assert task["metric"] == "acc" and 0 <= task["value"] <= 1 and task["local"] is True
    # The card names it as a local task, not a Hub dataset.
    shutil.copyfile(out_json, demo_export / "results.json")
    res = CliRunner().invoke(main, ["card", str(demo_export)])
    assert res.exit_code == 0, res.output
    card = (demo_export / "README.md").read_text()
    assert "skipprune_tiny_mc (local task)" in card and "type: local:skipprune-tiny-mc" in card
    assert "| skipprune_tiny_mc (acc, 0-shot, local task) |" in card
    from huggingface_hub import ModelCard

    results = ModelCard.load(demo_export / "README.md").data.eval_results
    assert {(r.dataset_type, r.metric_type) for r in results} == {
        ("local:file-short-txt", "perplexity"),
        ("local:skipprune-tiny-mc", "acc"),
    }


def test_unknown_task(demo_export):
    pytest.importorskip("lm_eval")
    res = CliRunner().invoke(
        main, ["eval", str(MODEL), "--no-speed", "--seq-len", "128", "--tasks", "no_such_task_xyz"]
    )
    assert res.exit_code == 1 and "no_such_task_xyz" in res.output, res.output
