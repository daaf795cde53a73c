"""A large export's checks beside its copy (export/sidecar.py): the same records, card and verdicts as in one
process, the source's half of the logit check run while the shards are written, each of the export's weights
read only once written, and the child process gone with the export."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time

import pytest

import skipprune
from skipprune.errors import SourceError, VerificationError
from skipprune.export.source import index_tensors, open_source
from skipprune.export.writer import OutTensor, write_shards
from skipprune.prune.plan import PrunePlan

from tiny import anatomy_of

pipeline = importlib.import_module("skipprune.export.pipeline")
sidecar = importlib.import_module("skipprune.export.sidecar")
verify = importlib.import_module("skipprune.export.verify")
PLAN = PrunePlan(6, {0, 1, 3}, {1, 3, 5})  # blocks 1 and 3, attention 0, MLP 5


def _export(src, out, **kw):
    return skipprune.export(src, out, PLAN, device_map="stream", **kw)


def test_a_large_export_checks_beside_its_copy_and_writes_the_same_folder(family_sources, tmp_path, monkeypatch):
    src = family_sources["llama"]
    alone = _export(src, tmp_path / "alone" / "out")
    started = []
    real = sidecar.Sidecar.__init__

    def counted(self, task):
        started.append(task)
        real(self, task)

    monkeypatch.setattr(sidecar, "OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar, "LOGITS_OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar.Sidecar, "__init__", counted)
    monkeypatch.setattr(pipeline, "_drawing_is_cheap", lambda: False)  # as in a fresh process: drawn beside the copy
    beside = _export(src, tmp_path / "beside" / "out")
    assert sorted(started) == ["figures", "logits"]
    assert beside.record.to_dict() == alone.record.to_dict()
    assert beside.record.verification.numerics.max_abs_logit_diff == 0.0
    for name in ("README.md", "layers.png", "config.json", "model.safetensors", "skipprune.json"):
        assert (tmp_path / "beside" / "out" / name).read_bytes() == (tmp_path / "alone" / "out" / name).read_bytes()


def test_each_exported_weight_is_read_only_once_it_is_written(family_sources, tmp_path):
    src = family_sources["llama"]
    out = tmp_path / "out"
    skipprune.export(src, out, PLAN, verify_numerics=False)
    waited = []
    with verify.LogitCheck(open_source(str(src)), PLAN, anatomy_of("llama"), streamed=True) as check:
        check.reference()
        model = check.load_export(out, waited.append)
        assert waited == []  # loading reads no weight
        check.compare(check.run_export(model))
    stored = set(index_tensors(out))
    assert set(waited) == stored  # every read waited for its tensor, under its name in the shards


def test_weights_read_at_load_are_read_again_once_all_are_written(family_sources, tmp_path, monkeypatch):
    src = family_sources["llama"]
    out = tmp_path / "out"
    skipprune.export(src, out, PLAN, verify_numerics=False)
    monkeypatch.setattr(verify, "_read_when_written", lambda model, wait: False)
    waited = []
    with verify.LogitCheck(open_source(str(src)), PLAN, anatomy_of("llama"), streamed=True) as check:
        check.reference()
        check.compare(check.run_export(check.load_export(out, waited.append)))
    assert waited == [None]


def test_shard_headers_and_index_exist_before_the_first_byte_is_copied(family_sources, tmp_path):
    src = open_source(str(family_sources["llama"]))
    tensors = [OutTensor(t.name, t, t.dtype) for t in src.tensors.values()]
    seen = []

    def check(t, where):
        if not seen:
            seen.append(index_tensors(tmp_path))  # every shard's header, read through the index
        assert (
            where.file.read_bytes()[where.start : where.end]
            == t.source.file.read_bytes()[t.source.start : t.source.end]
        )

    write_shards(tmp_path, tensors, 40_000, check=check)
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    assert set(seen[0]) == set(src.tensors)


def test_a_byte_check_that_missed_a_tensor_fails_the_structure_check(family_sources, tmp_path):
    src = open_source(str(family_sources["llama"]))
    tensors = [OutTensor(t.name, t, t.dtype) for t in src.tensors.values()]
    compared = verify.ByteCheck()
    write_shards(tmp_path, tensors, 10**9, check=compared)
    compared.seen.pop(tensors[3].name)
    with pytest.raises(VerificationError, match="was not compared where the shard header puts it"):
        verify.verify_structure(tmp_path, tensors, compared=compared)


def test_an_error_in_the_child_comes_back_as_one_line(tmp_path):
    job = {"path": str(tmp_path / "nothing"), "id": "x", "revision": None, "plan": PLAN.to_dict()}
    job.update(split=True, dtype="auto", folder=str(tmp_path))
    with sidecar.Sidecar("logits") as child, pytest.raises(SourceError, match="nothing") as caught:
        child.start(job)
        child.result()
    assert "\n" not in str(caught.value)


def test_the_child_goes_with_the_export(family_sources, tmp_path):
    """Killed outright (SIGKILL: no clean-up runs), an export takes its child process with it."""
    job = {"path": str(family_sources["llama"]), "id": "x", "revision": None, "plan": PLAN.to_dict()}
    job.update(split=True, dtype="auto", folder=str(tmp_path))  # waits for shards that never come
    code = (
        "import sys, time; from skipprune.export.sidecar import Sidecar; "
        f"child = Sidecar('logits'); child.start({job!r}); print(child.proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    time.sleep(1)
    os.kill(pid, 0)  # alive, waiting
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the child outlived its export")


def test_a_failed_export_stops_its_child(family_sources, tmp_path, monkeypatch):
    children = []
    real = sidecar.Sidecar.__init__

    def kept(self, task):
        real(self, task)
        children.append(self.proc)

    monkeypatch.setattr(sidecar, "OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar, "LOGITS_OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar.Sidecar, "__init__", kept)
    monkeypatch.setattr(verify, "check_model_expects", lambda *a, **k: (_ for _ in ()).throw(VerificationError("no")))
    with pytest.raises(VerificationError, match="no"):
        _export(family_sources["llama"], tmp_path / "out")
    assert children and all(p.poll() is not None for p in children)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*partial*"))


def test_a_child_started_early_for_nothing_is_stopped(family_sources, tmp_path, monkeypatch):
    """Started before the source is checked, the logits child goes unused when the check runs in memory."""
    children = []
    real = sidecar.Sidecar.__init__

    def kept(self, task):
        real(self, task)
        children.append((task, self.proc))

    monkeypatch.setattr(sidecar, "OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar, "LOGITS_OVERLAP_BYTES", 0)
    monkeypatch.setattr(sidecar.Sidecar, "__init__", kept)
    result = skipprune.export(family_sources["llama"], tmp_path / "out", PLAN)
    assert result.record.verification.numerics.mode == "in memory"
    assert "logits" in [task for task, _ in children] and all(p.poll() is not None for _, p in children)
