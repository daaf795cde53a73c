"""Push and download through a local server speaking the Hub protocol (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import skipprune

from common import assert_clean_failure, run
from hubserver import HubServer

TOKEN = "hf_skipprune_test_token_0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with HubServer() as server:
        env = {
            "HF_ENDPOINT": server.url,
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"),
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "ENDPOINT", server.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        server.env = env
        yield server


@pytest.fixture
def export_dir(family_sources, tmp_path):
    out = tmp_path / "pruned"
    skipprune.export(family_sources["qwen3"], out, drop_attn="last:2", drop_mlp="0")
    return out


def test_push_uploads_identical_files_and_loads_back(hub, export_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    proc = run("push", export_dir, "pruned-qwen3", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{hub.url}/tester/pruned-qwen3"
    files = hub.state.repos["tester/pruned-qwen3"].files("main")
    for name, data in before.items():
        if name != "README.md":
            assert files[name] == data, name
    assert 'from_pretrained("tester/pruned-qwen3", trust_remote_code=True)' in files["README.md"].decode()
    assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == before  # the local export is untouched
    # The token went over the wire as a Bearer header, and nowhere into files or output.
    assert hub.state.tokens == {TOKEN}
    assert all(TOKEN.encode() not in data for data in files.values())
    assert TOKEN not in proc.stdout + proc.stderr

    # A user's fresh process loads it through HF_ENDPOINT, remote code included, and gets the same logits.
    code = (
        "import torch, sys; from transformers import AutoModelForCausalLM as A\n"
        "m = A.from_pretrained('tester/pruned-qwen3', trust_remote_code=True)\n"
        "torch.save(m(input_ids=torch.tensor([[3, 14, 15, 92, 65]])).logits, sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "logits.pt")],
        env={**os.environ, **hub.env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    local = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)
    with torch.no_grad():
        want = local(input_ids=torch.tensor([[3, 14, 15, 92, 65]])).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), want)


def test_push_to_branch_and_export_from_the_hub(hub, export_dir, family_sources, tmp_path):
    assert run("push", family_sources["llama"], "org/base", env=hub.env).returncode == 0
    proc = run("push", export_dir, "org/base", "--revision", "pruned", "--commit-message", "pruned copy", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{hub.url}/org/base/tree/pruned"
    repo = hub.state.repos["org/base"]
    assert "modeling_skipprune.py" in repo.files("pruned") and "modeling_skipprune.py" not in repo.files("main")
    # SOURCE as a Hub id: downloaded (needed files only), then exported; the card names the base model.
    out = tmp_path / "from-hub"
    proc = run("export", "org/base", out, "--drop-attn", "4-5", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    record = (out / "skipprune.json").read_text()
    assert '"id": "org/base"' in record and repo.branches["main"] in record
    assert "base_model: org/base" in (out / "README.md").read_text()


def test_push_errors(hub, export_dir, tmp_path):
    assert_clean_failure(run("push", export_dir, "bad repo id!", env=hub.env), "invalid repo id")
    no_token = {**hub.env, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "empty-home")}
    assert_clean_failure(run("push", export_dir, "x", env=no_token), "no Hugging Face token")
    assert_clean_failure(run("push", tmp_path, "x", env=hub.env), "not a model folder")


def test_server_error_mid_upload_then_rerun_completes(hub, export_dir):
    hub.state.fail["commit"] = 100  # every commit attempt fails (after the LFS uploads went through)
    proc = run("push", export_dir, "flaky", env=hub.env)
    assert_clean_failure(proc, "push to tester/flaky failed", after_progress=True)
    assert "run the same command again" in proc.stderr
    stored = len(hub.state.lfs)
    assert stored > 0 and list(hub.state.repos["tester/flaky"].files("main")) == [".gitattributes"]
    hub.state.fail["commit"] = 0
    uploads_before = sum(r.startswith("PUT") for r in hub.state.requests)
    assert run("push", export_dir, "flaky", env=hub.env).returncode == 0
    assert sum(r.startswith("PUT") for r in hub.state.requests) == uploads_before  # LFS objects not sent twice
    files = hub.state.repos["tester/flaky"].files("main")
    assert files["model.safetensors"] == (export_dir / "model.safetensors").read_bytes()


def test_no_token_on_disk(hub, export_dir, tmp_path):
    assert run("push", export_dir, "t", env=hub.env).returncode == 0
    files = [p for root in (export_dir, tmp_path / "hf-home") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)  # the scan really covered the export
    for p in files:
        assert TOKEN.encode() not in p.read_bytes(), p


def test_pushed_files_name_no_local_path(hub, tmp_path):
    """A card, skipprune.json and results.json on the Hub name the source by folder name and the model by repo
    id: no path of the user's machine (the export and the measuring text live under tmp_path here)."""
    from skipprune.data import DEMO_MODEL, HELDOUT

    out = tmp_path / "deep" / "exports" / "demo-pruned"
    text = tmp_path / "texts" / "calibration.txt"
    text.parent.mkdir()
    text.write_text(HELDOUT.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    proc = run("export", DEMO_MODEL, out, "--drop-attn", "last:3", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    measure = ["--no-speed", "--seq-len", "64", "--text", text, "--json"]
    proc = run("eval", out, "--baseline", DEMO_MODEL, *measure, out / "results.json", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert run("card", out, env=hub.env).returncode == 0
    assert run("push", out, "demo-pruned", env=hub.env).returncode == 0
    files = hub.state.repos["tester/demo-pruned"].files("main")
    for name in ("README.md", "skipprune.json", "results.json"):
        content = files[name].decode()
        for path in (str(tmp_path), str(DEMO_MODEL), str(DEMO_MODEL.parent), str(Path.home()), str(Path.cwd())):
            assert path not in content, (name, path)
    card = files["README.md"].decode()
    assert "skipprune export demo-model demo-pruned --drop-attn last:3" in card
    assert 'from_pretrained("tester/demo-pruned", trust_remote_code=True)' in card
    assert "file calibration.txt" in card

    # Measuring the pushed model by its Hub id labels it by that id, not by a snapshot hash.
    proc = run("eval", "tester/demo-pruned", *measure, tmp_path / "hub.json", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "hub.json").read_text())["model"] == "tester/demo-pruned"


def test_push_checks_the_records_before_creating_anything(hub, export_dir):
    (export_dir / "results.json").write_text('{"schema_version": 2, "model": "x", "params": "many"}')
    assert_clean_failure(run("push", export_dir, "poisoned", env=hub.env), "params must be a whole number")
    assert "tester/poisoned" not in hub.state.repos


def test_export_and_push_in_one_command(hub, family_sources, tmp_path):
    out = tmp_path / "o"
    proc = run("export", family_sources["llama"], out, "--drop-attn", "4-5", "--push-to", "one-go", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out), f"{hub.url}/tester/one-go"]
    files = hub.state.repos["tester/one-go"].files("main")
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert 'from_pretrained("tester/one-go", trust_remote_code=True)' in files["README.md"].decode()
