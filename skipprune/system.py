"""Facts about the machine and durable file operations, shared by every stage."""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import MeasureError


def available_memory() -> int:
    """Bytes of memory the kernel can give without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def busy_cores(seconds: float = 0.2) -> float | None:
    """How many of the CPUs this process may use other processes kept busy over the next `seconds` (this
    process sleeps meanwhile), from Linux's /proc/stat; None where that cannot be read."""

    def sample() -> dict[str, tuple[int, int]]:
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        return {r[0]: (int(r[4]) + int(r[5]), sum(int(x) for x in r[1:9])) for r in rows if int(r[0][3:]) in cpus}

    try:
        cpus = os.sched_getaffinity(0)
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    busy = 0.0
    for cpu, (idle, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            busy += 1 - (idle - before[cpu][0]) / (total - before[cpu][1])
    return busy


@functools.cache
def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads(requested: int | None = None) -> str | None:
    """Set torch's CPU thread count: `requested`, else OMP_NUM_THREADS (which torch follows by itself), else one
    per CPU core other processes leave free. Returns a line to log when that is fewer than torch's default.

    Why: torch's threads wait for each other at every operation, so one thread sharing a core with another
    busy process stalls them all (README: the demo model's timings)."""
    import torch

    if requested:
        torch.set_num_threads(requested)
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    default = _default_threads()
    busy = busy_cores() if default > 1 else None
    free = default if busy is None else max(1, min(default, round(len(os.sched_getaffinity(0)) - busy)))
    torch.set_num_threads(free)
    if free < default:
        return (
            f"other processes keep {busy:.1f} of {len(os.sched_getaffinity(0))} CPU cores busy: computing with "
            f"{free} thread{'s' * (free > 1)} instead of {default} (skipprune --threads N to choose)"
        )
    return None


class Clock:
    """Wall time spent per phase of a command, for its closing log line (`with clock("copy"): ...`)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.spent: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - t

    def lap(self, phase: str) -> None:
        """Everything since the start not counted yet goes to `phase`."""
        self.spent[phase] = time.perf_counter() - self.start - sum(self.spent.values())

    def summary(self) -> str:
        total = time.perf_counter() - self.start
        rest = total - sum(self.spent.values())
        parts = [f"{name} {s:.1f}" for name, s in self.spent.items()] + [f"other {rest:.1f}"]
        return f"{total:.1f} s: " + ", ".join(parts)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path, flushed: tuple[Path, ...] = ()) -> None:
    """Flush every file in `folder` (not recursive) but those `flushed` already, then the folder itself."""
    for p in folder.iterdir():
        if p.is_file() and p not in flushed:
            fsync_path(p)
    fsync_path(folder)


class Flusher:
    """fsync files in a background thread while the caller goes on, so the kernel writes them back while the
    process checks what it wrote; `join()` waits and re-raises a failure (a later fsync on a new descriptor
    would not see a write-back error this one already reported)."""

    def __init__(self, paths: list[Path]):
        import threading

        self.error: BaseException | None = None
        self.paths = tuple(paths)
        self.thread = threading.Thread(target=self._run, args=(self.paths,), daemon=True)
        self.thread.start()

    def _run(self, paths: tuple[Path, ...]) -> None:
        try:
            for p in paths:
                fsync_path(p)
        except BaseException as e:  # handed to join()
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def write_text_durably(path: Path, text: str, flush: bool = True) -> None:
    """Write `text` next to `path`, flush it, and rename it into place: a crash leaves the old or the new file,
    never a truncated one. `flush=False` in a folder that is flushed as a whole before anyone can see it (an
    export's staging folder): there an fsync of each small file waits behind the shards' write-back for nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if flush:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if flush:
        fsync_path(path.parent)


@contextmanager
def block_progress(layers, desc: str):
    """A progress bar that advances as each decoder block runs (forward pre-hooks on `layers`): one tick per
    block per forward pass. Shown on terminals only, like every bar of skipprune's."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(layers), desc=desc, unit="block", disable=None, leave=False)

    def tick(module, args) -> None:  # a pre-hook's return value would replace the block's inputs
        bar.update(1)

    handles = [layer.register_forward_pre_hook(tick) for layer in layers]
    try:
        yield bar
    finally:
        for h in handles:
            h.remove()
        bar.close()


def return_freed_memory() -> None:
    """Hand memory freed by torch back to the OS (glibc keeps freed blocks under 32 MB in its arenas, so a
    process that loads and drops one block's weights after another would otherwise keep growing). Linux and
    glibc only; elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def placement_options(device_map: str | None, max_memory: str | dict | None) -> tuple[str | None, dict | None]:
    """Checked accelerate placement options: `max_memory` as a dict, and only together with a device map."""
    if max_memory and device_map in (None, "stream"):
        raise MeasureError("--max-memory only applies with --device-map auto|balanced|...; streaming holds one block")
    return device_map, parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory


def parse_max_memory(text: str | None) -> dict | None:
    """'0=20GiB,1=20GiB,cpu=60GiB' -> {0: '20GiB', 1: '20GiB', 'cpu': '60GiB'} (accelerate's max_memory)."""
    if not text:
        return None
    out: dict = {}
    for item in text.split(","):
        key, _, value = item.strip().partition("=")
        if not value or not (key.isdigit() or key in ("cpu", "mps", "disk")):
            raise MeasureError(f"bad --max-memory item {item!r}: write DEVICE=SIZE items like 0=20GiB,cpu=60GiB")
        out[int(key) if key.isdigit() else key] = value.strip()
    return out
