"""Where an export (or a healed copy) is written before it exists: a temporary folder beside OUTPUT, under a
lock, that becomes OUTPUT only once complete and flushed (`staging`, `publish`). A failure, Ctrl-C or SIGTERM
before that removes it; a kill leaves a hidden partial folder that the next run on the same OUTPUT removes. So
an interrupted export never leaves a folder that looks complete. Export, heal and refresh share it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import threading
from pathlib import Path

from ..errors import OutputError, translated
from ..system import Flusher, fsync_path, fsync_tree

_PARTIAL = ".skipprune-partial-"
_OLD = ".skipprune-old-"  # a replaced OUTPUT, deleted once the new one is in place
_LOCK = ".skipprune-lock"


def check_output_parent(out: Path) -> None:
    try:
        str(out.absolute()).encode("utf-8")
    except UnicodeEncodeError:  # safetensors, the card and the Hub all need UTF-8 paths
        shown = ascii(str(out))[1:-1]
        raise OutputError(f"OUTPUT {shown} is not valid UTF-8; choose a folder name (and path) in UTF-8") from None
    p = out.parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise OutputError(f"cannot create OUTPUT {out}: {p} is a file, not a folder; choose another location")
    if not os.access(p, os.W_OK):
        raise OutputError(f"cannot write into {p}; choose a writable location for OUTPUT")


def check_output(out: Path, source: Path, overwrite: bool) -> None:
    real = out.resolve()
    if real == source or source in real.parents:
        raise OutputError(f"OUTPUT {out} is the source folder or inside it; choose a folder outside {source}")
    if real in source.parents:
        raise OutputError(f"OUTPUT {out} contains the source folder; choose a folder that does not hold {source}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"OUTPUT {out} is a file; choose a folder path")
    if out.exists() and not overwrite:
        raise OutputError(f"OUTPUT {out} already exists; pass --overwrite to replace it, or choose another folder")


@contextlib.contextmanager
def staging(out: Path, overwrite: bool):
    """A temporary folder beside `out`, under its lock, that an export (or a healed copy) is written into: it
    becomes `out` only through `publish`; a failure or an interruption before that removes it."""
    with _exclusive(out), _sigterm_cleans_up():
        # Checked again under the lock: another export may have published OUTPUT since the first check.
        if out.exists() and not overwrite:
            raise OutputError(f"OUTPUT {out} already exists; pass --overwrite to replace it, or choose another folder")
        _clean_stale_partials(out)
        tmp = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}"
        try:
            tmp.mkdir()
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def publish(tmp: Path, out: Path, overwrite: bool, flusher: Flusher | None = None) -> None:
    """Flush everything in `tmp` to stable storage (after the background `flusher`, whose failure is raised
    here), then rename it into place."""
    with translated(OutputError, f"flushing {out.name} to disk", "check the disk and the output location"):
        if flusher is not None:
            flusher.join()
        fsync_tree(tmp, flusher.paths if flusher is not None else ())
        _publish(tmp, out, overwrite)


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold a lock on OUTPUT for the whole export; a second export to it fails at once instead of racing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}{_LOCK}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another skipprune export is writing {out} right now; wait for it to finish or choose another OUTPUT"
            ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sigterm_cleans_up():
    """SIGTERM unwinds like Ctrl-C (exit status 143), so the partial folder is removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clean_stale_partials(out: Path) -> None:
    for p in [*out.parent.glob(f".{out.name}{_PARTIAL}*"), *out.parent.glob(f".{out.name}{_OLD}*")]:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Swap the finished folder into place; an old OUTPUT (with --overwrite) goes only after that. A folder
    that appeared at OUTPUT meanwhile is never replaced without --overwrite (rename refuses a non-empty one)."""
    old = None
    if out.exists() and overwrite:
        old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputError(
                f"OUTPUT {out} appeared while exporting; nothing was replaced, choose another folder"
            ) from None
        raise
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
