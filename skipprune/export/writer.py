"""Write tensors into sharded safetensors files without materialising a model.

Tensors whose dtype is unchanged are copied byte for byte by the kernel (copy_file_range) straight from
the source shard at their header offset: no Python buffer, no torch tensor. A dtype change converts one
tensor at a time. Shards are cut by a byte budget and named as transformers names them.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, translated
from .source import DTYPE_SIZES, TensorInfo, read_bytes

_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_FLOATS = {"F32", "F16", "BF16"}
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class OutTensor:
    name: str
    source: TensorInfo | None  # None: an all-zero tensor of `zeros_shape` that the output format needs
    dtype: str  # safetensors dtype in the output
    zeros_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape if self.source is not None else self.zeros_shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def output_dtype(source_dtype: str, requested: str) -> str:
    """'auto' keeps the source dtype; a float dtype converts float tensors only."""
    if requested == "auto" or source_dtype not in _FLOATS:
        return source_dtype
    return _TORCH_DTYPES[requested]


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes."""
    if isinstance(text, int):
        return text
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num) :]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise OutputError(f"bad size {text!r}: write it like 5GB, 500MB or 2GiB") from None
    if not math.isfinite(value):
        raise OutputError(f"bad size {text!r}: write a finite size like 5GB, 500MB or 2GiB")
    if value < 1:
        raise OutputError(f"bad size {text!r}: a shard needs at least 1 byte")
    return int(value)


def split_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Greedy in order; a tensor larger than the budget gets a shard of its own (as transformers does)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(folder: Path, tensors: list[OutTensor], max_bytes: int, progress=None, check=None) -> dict[str, str]:
    """Write all shards (and the index when there are several); returns the weight map name -> file.
    Every shard's header and the index come first, with each file at its full size, so that the export can be
    opened (its weights read lazily) while its data is being written. `progress(nbytes)` is called after each
    tensor, and `check(tensor, where)` (`where`: a TensorInfo of the written copy) before it."""
    shards = split_shards(tensors, max_bytes)
    names = shard_names(len(shards))
    weight_map = {t.name: name for name, shard in zip(names, shards) for t in shard}
    fds: dict[Path, int] = {}
    try:
        with translated(OutputError, f"writing shards into {folder.parent}", "check that the location is writable"):
            starts = [_create(folder / name, shard) for name, shard in zip(names, shards)]
            if len(shards) > 1:
                index = {
                    "metadata": {"total_size": sum(t.nbytes for t in tensors)},
                    "weight_map": dict(sorted(weight_map.items())),
                }
                (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            for name, shard, start in zip(names, shards, starts):
                _fill(folder / name, shard, start, fds, progress, check)
    finally:
        for fd in fds.values():
            os.close(fd)
    return weight_map


def header_bytes(tensors: list[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _create(path: Path, tensors: list[OutTensor]) -> int:
    """A shard with its header, at its full size (the data still zeros, not allocated); returns where its
    data starts."""
    head = header_bytes(tensors)
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(len(head) + sum(t.nbytes for t in tensors))
    return len(head)


def _fill(path: Path, tensors: list[OutTensor], pos: int, fds: dict[Path, int], progress=None, check=None) -> None:
    dst = os.open(path, os.O_WRONLY)
    try:
        for t in tensors:
            if t.source is None:
                pass  # zeros already: the file was created at its full size
            elif t.dtype == t.source.dtype:
                if t.source.file not in fds:
                    fds[t.source.file] = os.open(t.source.file, os.O_RDONLY)
                _copy_range(fds[t.source.file], t.source.start, dst, pos, t.nbytes)
            else:
                os.pwrite(dst, convert_bytes(t), pos)
            if check:
                check(t, TensorInfo(t.name, path, t.dtype, t.shape, pos, pos + t.nbytes))
            pos += t.nbytes
            if progress:
                progress(t.nbytes)
    finally:
        os.close(dst)


def _copy_range(src: int, src_pos: int, dst: int, dst_pos: int, count: int) -> None:
    while count:
        try:
            n = os.copy_file_range(src, dst, min(count, 1 << 30), src_pos, dst_pos)
        except (AttributeError, OSError) as e:  # no copy_file_range here (or across these filesystems)
            if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.pwrite(dst, os.pread(src, min(count, 64 << 20), src_pos), dst_pos)
        if n == 0:
            raise OSError(errno.EIO, "source shard ended early")
        count -= n
        src_pos += n
        dst_pos += n


def convert_bytes(t: OutTensor) -> bytes:
    import torch

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    data = bytearray(read_bytes(t.source))
    tensor = (
        torch.frombuffer(data, dtype=dtypes[t.source.dtype]) if data else torch.empty(0, dtype=dtypes[t.source.dtype])
    )
    return tensor.to(dtypes[t.dtype]).view(torch.uint8).numpy().tobytes()
