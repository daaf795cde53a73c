"""Thread choice: torch's threads stall each other when one shares a core with a busy process, so skipprune
computes with one thread per core other processes leave free, unless told."""

from __future__ import annotations

import io
import os
import sys

import torch
from click.testing import CliRunner

from skipprune import system
from skipprune.cli import main


def test_busy_cores_reads_this_machine():
    busy = system.busy_cores(0.05)
    if sys.platform == "linux":  # elsewhere there is no /proc/stat and the answer is None
        assert busy is not None and 0 <= busy <= len(os.sched_getaffinity(0)) + 0.01
    else:
        assert busy is None


def test_threads_follow_the_free_cores(monkeypatch):
    default = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(system, "_default_threads", lambda: 4)
    monkeypatch.setattr(system.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    try:
        monkeypatch.setattr(system, "busy_cores", lambda: 0.1)
        assert system.set_threads() is None and torch.get_num_threads() == 4  # an idle machine: torch's default
        monkeypatch.setattr(system, "busy_cores", lambda: 2.8)
        note = system.set_threads()
        assert torch.get_num_threads() == 1 and "2.8 of 4 CPU cores busy" in note and "--threads" in note
        monkeypatch.setattr(system, "busy_cores", lambda: 0.0)
        assert system.set_threads() is None and torch.get_num_threads() == 4  # back up when they are free again
        assert system.set_threads(3) is None and torch.get_num_threads() == 3  # asked for
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        monkeypatch.setattr(system, "busy_cores", lambda: 3.9)
        torch.set_num_threads(2)
        assert system.set_threads() is None and torch.get_num_threads() == 2  # the user's OMP_NUM_THREADS stands
    finally:
        torch.set_num_threads(default)


def test_cli_threads_option(monkeypatch, tmp_path):
    default = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(system, "busy_cores", lambda: 1.5)  # would lower the count: --threads wins
    monkeypatch.setattr("skipprune.demo.run_demo", lambda output, overwrite: seen.append(torch.get_num_threads()))
    try:
        res = CliRunner().invoke(main, ["--threads", "1", "demo", str(tmp_path / "d")])
        assert res.exit_code == 0, res.output
        assert seen == [1] and "busy" not in res.output
        assert torch.get_num_threads() == default  # restored when the command ends: a Python caller keeps its own
    finally:
        torch.set_num_threads(default)


def test_the_thread_note_comes_with_progress_not_with_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(system, "_default_threads", lambda: 2)
    monkeypatch.setattr(system.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(system, "busy_cores", lambda: 1.0)
    default = torch.get_num_threads()
    try:
        res = CliRunner().invoke(main, ["analyze", str(tmp_path / "nothere")])
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1 and "busy" not in res.output
    finally:
        torch.set_num_threads(default)


def test_loading_bars_wait_two_seconds(monkeypatch, tmp_path):
    """transformers' "Loading weights" bar shows only for a load over 2 s; other bars are left alone."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr("skipprune.demo.run_demo", lambda output, overwrite: None)
    previous, active, threads = (
        hf_logging.set_tqdm_hook(None),
        hf_logging.is_progress_bar_enabled(),
        torch.get_num_threads(),
    )
    hf_logging.enable_progress_bar()  # real bars, so their settings can be read
    try:
        assert CliRunner().invoke(main, ["--threads", "1", "demo", str(tmp_path / "d")]).exit_code == 0
        bar = hf_logging.tqdm(range(2), desc="Loading weights", file=io.StringIO())
        other = hf_logging.tqdm(range(2), desc="Downloading", file=io.StringIO())
        assert bar.delay == 2 and other.delay == 0
        bar.close(), other.close()
    finally:
        hf_logging.set_tqdm_hook(previous)
        if not active:
            hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)


def test_the_clock_splits_wall_time_into_phases(monkeypatch):
    now = iter([0.0, 2.0, 5.0, 6.0, 7.0, 11.0, 12.0])
    monkeypatch.setattr(system.time, "perf_counter", lambda: next(now))
    clock = system.Clock()  # 0
    clock.lap("checks")  # 2: checks 2
    with clock("copy"):  # 5..6
        pass
    with clock("copy"):  # 7..11
        pass
    assert clock.spent == {"checks": 2.0, "copy": 5.0}
    assert clock.summary() == "12.0 s: checks 2.0, copy 5.0, other 5.0"


def test_an_export_says_where_its_time_went(tmp_path, caplog):
    import logging

    import skipprune
    from skipprune.demo import DEMO_MODEL

    with caplog.at_level(logging.INFO, logger="skipprune"):
        skipprune.export(DEMO_MODEL, tmp_path / "out", drop_attn="last:2")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("export took"))
    phases = [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(", ")]
    assert phases[:2] == ["source checks", "copy and byte check"] and "logit check" in phases and "flush" in phases
