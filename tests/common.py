"""Helpers shared by the tests: run the installed command, hash a folder, check the one-line error contract."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

EXE = shutil.which("skipprune")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run(*args, env=None, cwd=None):
    return subprocess.run(
        [EXE, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd
    )


def assert_clean_failure(proc, needle: str, out: Path | None = None, after_progress: bool = False):
    """Exit != 0, no traceback, and one `error:` line; with after_progress, progress output may precede it
    (a failure midway through an upload), otherwise the error is all that is printed."""
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert after_progress or len(lines) == 1, proc.stderr
    assert needle in errors[0], errors[0]
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.skipprune-*"))


def tensors(folder: Path) -> dict:
    """Every tensor of a checkpoint folder's shards, by name."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out
