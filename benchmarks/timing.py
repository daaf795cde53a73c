"""What the export benchmarks measure of one command: wall time, the peak of the memory its whole process tree
holds at once (a large export runs its logit check in a child process beside the copy: the sum counts, not the
larger of the two; as PSS, so that the libraries both map count once), and the time split the export logs
("export took 12.3 s: copy and byte check 4.1, ...")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids += _tree(int(child))
    except OSError:
        pass
    return pids


def _pss(pid: int) -> int:
    """A process's proportional set size: its private pages plus its share of pages mapped by several
    processes (torch's libraries in the export and its child count once, not twice)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, the peak of the process tree's summed PSS (bytes, sampled every 20 ms; for a single process
    its peak RSS from wait4 when that is larger: a short command can end between samples) and stderr of one
    command; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    seen: set[int] = set()

    def sample() -> None:
        while not done.is_set():
            tree = _tree(proc.pid)
            seen.update(tree)
            peak[0] = max(peak[0], sum(_pss(p) for p in tree))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, peak[0] if peak[0] and len(seen) > 1 else max(peak[0], usage.ru_maxrss * 1024), err


def split_of(stderr: str) -> dict[str, float]:
    """The export's own time split, phase -> seconds (empty for other commands)."""
    m = re.search(r"export took [\d.]+ s: (.*)", stderr)
    if not m:
        return {}
    return {name: float(s) for name, s in (part.rsplit(" ", 1) for part in m[1].split(", "))}
