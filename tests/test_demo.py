"""`skipprune demo`, the README's first command, end to end (about 20 s on 2 cores)."""

from __future__ import annotations

from skipprune.records import ExportRecord, Results

from common import run


def test_demo_runs_and_reruns_over_its_own_output(tmp_path):
    out = tmp_path / "demo-out"
    proc = run("demo", out)
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in proc.stdout and "pruned says:" in proc.stdout
    record, results = ExportRecord.load(out), Results.load(out / "results.json")
    assert record.plan.drop_attention == {9, 10, 11} and record.verification.numerics.max_abs_logit_diff == 0
    assert results.kv_bytes_per_token * 4 == results.baseline.kv_bytes_per_token * 3
    assert results.perplexity > results.baseline.perplexity > 1
    assert "| perplexity (256-token windows) |" in (out / "README.md").read_text()
    assert run("demo", out).returncode == 0  # replaces its own earlier output without --overwrite
