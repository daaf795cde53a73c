"""analyze / sweep: metrics agree with independent computations; in-memory removal equals the export."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.cli import main
from skipprune.measure.importance import measure_importance
from skipprune.measure.perplexity import perplexity
from skipprune.prune.bypass import removed_in_place
from skipprune.prune.plan import PrunePlan
from skipprune.prune.suggest import paper_grid, parse_target, suggest

from common import assert_clean_failure, run
from tiny import anatomy_of


def windows(vocab=128, n=3, length=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, length), generator=g) for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "gemma2", "olmo2"])
def test_block_cosine_matches_hidden_states(family, family_sources):
    model = AutoModelForCausalLM.from_pretrained(family_sources[family], dtype=torch.float32).eval()
    ws = windows()
    imp = measure_importance(model, anatomy_of(family), ws)
    # Independent: layer inputs from output_hidden_states (entry i = input of layer i, for i < L).
    n = len(model.model.layers)
    with torch.no_grad():
        per_window = [model(input_ids=w, output_hidden_states=True).hidden_states for w in ws]
    for i in range(n - 1):
        want = torch.cat(
            [torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).flatten() for hs in per_window]
        ).mean()
        assert imp.block_cos[i] == pytest.approx(want.item(), abs=1e-5)
    assert all(-1 <= c <= 1 for c in imp.attention_cos + imp.mlp_cos + imp.block_cos)
    assert imp.tokens == 3 * 16 and len(imp.angular[1]) == n and len(imp.angular[n]) == 1
    assert imp.angular[1][0] == pytest.approx(torch.arccos(torch.tensor(imp.block_cos[0])).item() / torch.pi, abs=0.05)


def test_suggestions_respect_the_budget(family_sources):
    model = AutoModelForCausalLM.from_pretrained(family_sources["llama"], dtype=torch.float32).eval()
    imp = measure_importance(model, anatomy_of("llama"), windows())
    attn = suggest(imp, "kv:50%")
    assert {s.strategy for s in attn} == {"last-N", "lowest-importance"}
    assert all(len(s.plan.drop_attention) == 3 and not s.plan.drop_mlp for s in attn)
    assert attn[0].plan.drop_attention == {3, 4, 5}
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    blocks = suggest(imp, "params:30%", block, total)
    count = round(0.3 * total / block)
    assert {s.strategy for s in blocks} == {"last-N", "lowest-importance", "best-window"}
    assert all(len(s.plan.dropped_blocks) == count for s in blocks)
    best = next(s for s in blocks if s.strategy == "best-window")
    assert best.plan.dropped_blocks == list(range(best.plan.dropped_blocks[0], best.plan.dropped_blocks[0] + count))
    assert "--drop-blocks" in best.command("m")
    for bad in ("attn:0%", "layers:5%", "kv:abc%", "kv:25"):
        with pytest.raises(skipprune.SkippruneError):
            parse_target(bad)


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_in_memory_removal_equals_the_export(family, family_sources, tmp_path):
    src = family_sources[family]
    plan = PrunePlan.from_specs(6, drop_attn="last:2", drop_mlp="1", drop_blocks="2")
    skipprune.export(src, tmp_path / "o", plan)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "o", trust_remote_code=True, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.cat(windows(n=4))
    before, _ = perplexity(model, ids, "t")
    with removed_in_place(model, plan, anatomy_of(family)):
        inside, _ = perplexity(model, ids, "t")
    want, _ = perplexity(exported, ids, "t")
    assert inside == want
    assert perplexity(model, ids, "t")[0] == before  # restored


def test_grid_is_the_papers():
    points = paper_grid(12)
    assert len(points) == 1 + 3 * 3 * 2
    attn66 = next(p.plan for p in points if p.kind == "attention" and p.kept_percent == 66 and not p.keep_last_layer)
    assert attn66.drop_attention == {8, 9, 10, 11}
    attn66_last = next(p.plan for p in points if p.kind == "attention" and p.kept_percent == 66 and p.keep_last_layer)
    assert attn66_last.drop_attention == {7, 8, 9, 10}


def test_analyze_and_sweep_commands_on_the_demo_model(tmp_path):
    from skipprune.data import DEMO_MODEL as MODEL

    res = CliRunner().invoke(
        main,
        [
            "analyze",
            str(MODEL),
            "--samples",
            "2",
            "--seq-len",
            "64",
            "--suggest",
            "attn:25%",
            "--json",
            str(tmp_path / "a.json"),
            "--plot",
            str(tmp_path / "a.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "a.json").read_text())
    assert len(data["layers"]) == 12 and data["suggestions"][0]["plan"]["drop_attention"] == [9, 10, 11]
    assert "skipprune export" in res.output and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert "which `eval` scores on by default" in res.output  # calibrated on the evaluation text: said
    res = CliRunner().invoke(
        main,
        [
            "sweep",
            str(MODEL),
            "--samples",
            "2",
            "--seq-len",
            "64",
            "--no-speed",
            "--json",
            str(tmp_path / "s.json"),
            "--plot",
            str(tmp_path / "s.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "s.json").read_text())
    assert len(rows) == 19 and all(r["perplexity"] > 1 for r in rows)
    assert "attention removed from the last layers (ppl: 2 windows of 64 tokens)" in res.output


def test_analyze_bad_input():
    from skipprune.data import DEMO_MODEL as MODEL

    assert_clean_failure(run("analyze", MODEL, "--suggest", "everything"), "bad --suggest")


def test_plots_say_how_to_read_them():
    """importance.png: lower is safer, and the text it was measured on; sweep.png: plain numbers on its log axis,
    the window length with the perplexity."""
    from skipprune.measure.plots import importance_figure, sweep_figure
    from skipprune.measure.sweep import SweepRow
    from skipprune.prune.suggest import Importance
    from skipprune.records import PerplexityProtocol

    imp = Importance(
        [0.9, 0.99, 0.98, 0.97], [0.5, 0.99, 0.98, 0.9], [0.4, 0.98, 0.97, 0.88], {1: [0.3, 0.1, 0.2]}, 512
    )
    fig = importance_figure(imp, "m", "file calib.txt")
    assert fig._suptitle.get_text() == "m, on 512 tokens of file calib.txt"
    assert "lower = safer to remove" in fig.axes[0].get_ylabel() and "lower is safer" in fig.axes[0].get_title()
    proto = PerplexityProtocol("file t.txt", 4096, 16, 256, 4080)
    rows = [SweepRow("full", 100, False, [], 40.0, proto)] + [
        SweepRow(kind, keep, last, [3], 40.0 + (100 - keep), proto)
        for kind in ("attention", "mlp", "blocks")
        for keep in (90, 75, 66)
        for last in (False, True)
    ]
    fig = sweep_figure(rows, "m")
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(which="both") if t.get_text()]
    assert labels and all("10^" not in t and "times" not in t and "×" not in t for t in labels), labels
    assert fig.axes[0].get_ylabel() == "perplexity (256-token windows)"
    assert "not measured" in fig.axes[1].texts[0].get_text()  # no latency measured: said, not left empty


def test_sweep_marks_latency_ratios_within_noise():
    from skipprune.cards.card import NOISY
    from skipprune.measure.sweep import SweepRow, tables
    from skipprune.records import PerplexityProtocol

    proto = PerplexityProtocol("file t.txt", 4096, 16, 256, 4080)
    rows = [SweepRow("full", 100, False, [], 40.0, proto, 0.1, 0.1)]
    for kind in ("attention", "mlp", "blocks"):
        for keep in (90, 75, 66):
            for last in (False, True):
                # MLP: 2 % slower with repeats spreading 30 %; the rest 20 % faster with 1 % spread
                slow = kind == "mlp"
                t, spread = (0.102, 0.3) if slow else (0.08, 0.01)
                rows.append(SweepRow(kind, keep, last, [3], 41.0, proto, t, 0.1, {}, spread))
    text = tables(rows)
    assert f"1.020{NOISY}" in text and f"0.800{NOISY}" not in text and "0.800" in text
    assert f"{NOISY} within noise" in text
