"""The stock architecture: only whole blocks were removed, so the export is the source family's own config with
the kept layers renumbered (every per-layer list sliced): no remote code, every engine runs it."""

from __future__ import annotations

from .base import OutputFormat


class Stock(OutputFormat):
    name = "stock"
    engines = ("vLLM", "SGLang", "TensorRT-LLM", "llama.cpp")

    def expresses(self, plan, adaptive: dict | None) -> bool:
        return plan.blocks_only and adaptive is None

    def config(self, text: dict, plan, family, adaptive: dict | None) -> dict:
        return text

    def card_note(self, record, name: str) -> str:
        return "Only whole blocks were removed, so this is the stock architecture: no remote code is needed."
