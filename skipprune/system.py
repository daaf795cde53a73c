"""Facts about the machine and durable file operations, shared by every stage."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


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


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file in `folder` (not recursive), then the folder itself."""
    for p in folder.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(folder)


def write_text_durably(path: Path, text: str) -> None:
    """Write `text` next to `path`, flush it, and rename it into place: a crash leaves the old or the new file,
    never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
