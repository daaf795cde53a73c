"""Model cards: metadata round-trips, only measured numbers appear, the diagram matches the plan."""

from __future__ import annotations

import json
import struct
import zlib

from click.testing import CliRunner
from huggingface_hub import ModelCard

import skipprune
from skipprune.cards.diagram import BLOCK, KEPT, REMOVED, layer_colors
from skipprune.cli import main


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_card_after_export_has_no_invented_numbers(family_sources, tmp_path):
    out = tmp_path / "o"
    skipprune.export(family_sources["mistral"], out, drop_attn="4-5", drop_blocks="1", log=lambda m: None)
    card = ModelCard.load(out / "README.md")
    assert card.data.tags == ["skipprune", "pruned", "attention-pruning", "block-pruning"]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.eval_results is None and "base_model" not in card.data.to_dict()  # local source
    assert "Not measured yet" in card.text and "trust_remote_code=True" in card.text
    assert str(family_sources["mistral"]) not in card.content  # no local paths in a shareable card
    w, h = png_size((out / "layers.png").read_bytes())
    assert h > 6 * 10 and w > 0


def test_card_command_with_results(family_sources, tmp_path):
    out = tmp_path / "o"
    skipprune.export(family_sources["llama"], out, drop_blocks="last:2", log=lambda m: None)
    results = {"schema_version": 1, "model": "o", "params": 900, "disk_bytes": 3600, "kv_bytes_per_token": 256,
               "perplexity": 12.5, "perplexity_protocol": {"text": "file t.txt", "tokens": 512, "windows": 4,
               "seq_len": 128, "predicted_tokens": 508, "unit": "token"}, "speed": {}, "tasks": {},
               "baseline": {"model": "src", "params": 1200, "disk_bytes": 4800, "kv_bytes_per_token": 384,
                            "perplexity": 10.0, "speed": {}, "tasks": {}}}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = CliRunner().invoke(main, ["card", str(out), "--results", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    card = ModelCard.load(out / "README.md")
    (ev,) = card.data.eval_results
    assert ev.metric_type == "perplexity" and ev.metric_value == 12.5 and ev.dataset_type == "local:file-t-txt"
    assert "not a Hub dataset" in ev.dataset_name
    assert "| perplexity | 10.00 | 12.50 | 1.250 |" in card.text
    assert "| KV cache per token | 384 B | 256 B | 0.667 |" in card.text
    assert "Benchmarks (lm-eval): not measured." in card.text
    assert "trust_remote_code" not in card.text  # blocks only: stock architecture
    assert "block-pruning" in card.data.tags


def test_diagram_colors_follow_the_plan():
    from skipprune import PrunePlan

    plan = PrunePlan(4, {1, 3}, {2, 3})
    assert layer_colors(plan) == [(KEPT, KEPT), (REMOVED, KEPT), (KEPT, REMOVED), (BLOCK, BLOCK)]
    from skipprune.cards.diagram import render_png

    data = render_png(plan)
    # Decode the image data and check a pixel inside the attention cell of layer 1 is red.
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    width, _ = png_size(data)
    row = 1 + 2 + 1 * (10 + 2) + 5  # top margin, then layer 1, mid-cell
    x = 2 + 10
    offset = row * (1 + 3 * width) + 1 + 3 * x
    assert tuple(raw[offset : offset + 3]) == REMOVED


def test_card_command_refuses_other_folders(tmp_path):
    res = CliRunner().invoke(main, ["card", str(tmp_path)])
    assert res.exit_code == 1 and "no skipprune.json" in res.output
