"""Model cards: metadata round-trips, only measured numbers appear, the diagram matches the plan."""

from __future__ import annotations

import json
import struct

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
    skipprune.export(family_sources["mistral"], out, drop_attn="4-5", drop_blocks="1")
    card = ModelCard.load(out / "README.md")
    assert card.data.tags == ["skipprune", "pruned", "attention-pruning", "block-pruning"]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.eval_results is None and "base_model" not in card.data.to_dict()  # local source
    assert "Not measured yet" in card.text and "trust_remote_code=True" in card.text
    assert str(family_sources["mistral"]) not in card.content  # no local paths in a shareable card
    w, h = png_size((out / "layers.png").read_bytes())
    assert w >= 600 and h >= 200  # a labelled figure, readable on the Hub page


def test_card_command_with_results(family_sources, tmp_path):
    out = tmp_path / "o"
    skipprune.export(family_sources["llama"], out, drop_blocks="last:2")
    results = {
        "schema_version": 1,
        "model": "o",
        "params": 900,
        "disk_bytes": 3600,
        "kv_bytes_per_token": 256,
        "perplexity": 12.5,
        "perplexity_protocol": {
            "text": "file t.txt",
            "tokens": 512,
            "windows": 4,
            "seq_len": 128,
            "predicted_tokens": 508,
            "unit": "token",
        },
        "speed": {},
        "tasks": {},
        "baseline": {
            "model": "src",
            "params": 1200,
            "disk_bytes": 4800,
            "kv_bytes_per_token": 384,
            "perplexity": 10.0,
            "speed": {},
            "tasks": {},
        },
    }
    # another kind of skipprune JSON is named as such, in one line (no warnings about unknown fields)
    analyze = {"tokens": 8, "layers": [], "angular_distance": {}, "ffn_cold_regions": {}}
    (tmp_path / "a.json").write_text(json.dumps(analyze))
    before = (out / "README.md").read_text()
    res = CliRunner().invoke(main, ["card", str(out), "--results", str(tmp_path / "a.json")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "is not a results file but an importance table (`skipprune analyze --json`)" in res.output
    assert (out / "README.md").read_text() == before
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = CliRunner().invoke(main, ["card", str(out), "--results", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    card = ModelCard.load(out / "README.md")
    (ev,) = card.data.eval_results
    assert ev.metric_type == "perplexity" and ev.metric_value == 12.5 and ev.dataset_type == "local:file-t-txt"
    assert "not a Hub dataset" in ev.dataset_name
    assert "| perplexity (128-token windows) | 10.00 | 12.50 | 1.250 |" in card.text
    assert "| KV cache per token | 384 B | 256 B | 0.667 |" in card.text
    assert "Benchmarks (lm-eval): not measured." in card.text
    assert "trust_remote_code" not in card.text  # blocks only: stock architecture
    assert "block-pruning" in card.data.tags


def test_diagram_colors_follow_the_plan():
    import matplotlib.colors as mc

    from skipprune import PrunePlan
    from skipprune.cards.diagram import layers_figure

    plan = PrunePlan(4, {1, 3}, {2, 3})
    assert layer_colors(plan) == [(KEPT, KEPT), (REMOVED, KEPT), (KEPT, REMOVED), (BLOCK, BLOCK)]
    ax = layers_figure(plan, "demo").axes[0]
    cells = {(round(p.get_x() + 0.45), round(p.get_y() + 0.4)): mc.to_hex(p.get_facecolor()) for p in ax.patches}
    # (layer, row): row 1 is attention, row 0 the MLP
    assert cells[(1, 1)] == REMOVED and cells[(1, 0)] == KEPT and cells[(2, 0)] == REMOVED
    assert cells[(3, 1)] == cells[(3, 0)] == BLOCK and cells[(0, 1)] == KEPT
    assert [t.get_text() for t in ax.get_yticklabels()] == ["attention", "MLP"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kept", "removed", "whole block removed"]
    assert "3 of 4 layers kept" in ax.get_title()


def test_card_command_refuses_other_folders(tmp_path):
    res = CliRunner().invoke(main, ["card", str(tmp_path)])
    assert res.exit_code == 1 and "no skipprune.json" in res.output


def test_timings_within_noise_are_flagged():
    from skipprune.cards.card import NOISY, _scores
    from skipprune.records import Latency, Measurement, Results, Speed

    def timed(seconds, spread, rate, decode_spread):
        return Speed("cpu", "float32", [Latency(8, 50, seconds, spread)], 128, rate, decode_spread, threads=2)

    results = Results(
        model="o",
        speed=timed(0.105, 0.20, 100.0, 0.01),  # 5 % slower, but its repeats spread 20 %: noise
        baseline=Measurement(model="s", speed=timed(0.100, 0.05, 150.0, 0.02)),
    )
    scores = _scores(results)
    assert f"| 1-token latency (batch 8, 50-token prompts) | 100.00 ms | 105.00 ms | 1.050{NOISY} |" in scores
    assert "| greedy decode speed (128 tokens) | 150.0 tokens/s | 100.0 tokens/s | 0.667 |" in scores  # a real effect
    assert "so that ratio is noise, not an effect" in scores and "with 2 CPU threads" in scores
    quiet = Results(
        model="o", speed=timed(0.07, 0.01, 150.0, 0.01), baseline=Measurement("s", speed=timed(0.1, 0.01, 100.0, 0.01))
    )
    assert NOISY not in _scores(quiet)
