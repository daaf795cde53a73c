"""layers.png: one row per SOURCE layer, two cells (attention | MLP), green kept / red removed, grey where
the whole block was removed. Written as a plain PNG with zlib, so cards need no plotting library."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from ..prune.plan import PrunePlan

KEPT, REMOVED, BLOCK, GAP = (46, 160, 67), (214, 39, 40), (150, 150, 150), (255, 255, 255)
CELL_W, CELL_H, PAD = 36, 10, 2


def layer_colors(plan: PrunePlan) -> list[tuple[tuple, tuple]]:
    rows = []
    for i in range(plan.num_layers):
        if i in plan.dropped_blocks:
            rows.append((BLOCK, BLOCK))
        else:
            rows.append((REMOVED if i in plan.drop_attention else KEPT, REMOVED if i in plan.drop_mlp else KEPT))
    return rows


def render_png(plan: PrunePlan) -> bytes:
    rows = layer_colors(plan)
    width = 2 * CELL_W + 3 * PAD
    raw = bytearray()

    def line(pixels):
        raw.append(0)  # PNG filter type: none
        for p in pixels:
            raw.extend(p)

    blank = [GAP] * width
    line(blank)
    for attn, mlp in rows:
        pixels = [GAP] * PAD + [attn] * CELL_W + [GAP] * PAD + [mlp] * CELL_W + [GAP] * PAD
        for _ in range(CELL_H):
            line(pixels)
        for _ in range(PAD):
            line(blank)
    height = len(raw) // (1 + 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def write_png(plan: PrunePlan, path: Path) -> Path:
    path.write_bytes(render_png(plan))
    return path
