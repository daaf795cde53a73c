"""Plan search: prefix reuse equals full forwards bit for bit; each greedy step's choice equals brute force over
full forwards; budgets, kinds, kept layers and the serving format hold; plan files round-trip into export; bad
budgets and plan files get one-line errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.data import DEMO_MODEL, HELDOUT
from skipprune.errors import PlanError, RecordError
from skipprune.measure.planning import model_costs
from skipprune.measure.prefix import PrefixObjective, _batch_bounds
from skipprune.prune.budget import Budget, amount, met, parse_budget, parse_budgets, parse_keep, parse_kinds, target
from skipprune.prune.bypass import removed_in_place
from skipprune.prune.plan import PrunePlan
from skipprune.prune.search import Move, Search
from skipprune.records import ExportRecord, PlanFile

from common import assert_clean_failure, run
from tiny import anatomy_of, make_model


def calibration(vocab=128, n=5, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)


def loaded(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


class FullForwards:
    """The objective computed the plain way: every window through the whole model with the plan removed in
    place, no prefix reuse, no bound (the reference the search must agree with)."""

    def __init__(self, model, family, windows, kind="kl", batch_windows=4):
        self.model, self.family, self.kind = model, family, kind
        # the same batches as the prefix objective's (matmuls round differently for other batch shapes)
        self.batches = [windows[a:b] for a, b in _batch_bounds(len(windows), batch_windows)]
        with torch.no_grad():
            self.logp = [
                torch.log_softmax(model(input_ids=b, use_cache=False).logits.float(), -1) for b in self.batches
            ]

    def logits(self, plan, b):
        with torch.no_grad(), removed_in_place(self.model, plan, self.family):
            return self.model(input_ids=self.batches[b], use_cache=False).logits.float()

    def value(self, plan, start=0, bound=None, batches=None):
        total = count = 0.0
        for b in range(len(self.batches)):
            logits = self.logits(plan, b)
            if self.kind == "kl":
                logp = self.logp[b]
                kl = (logp.exp() * (logp - torch.log_softmax(logits, -1))).sum(-1)
                total, count = total + kl.clamp_min(0).sum().item(), count + kl.numel()
            else:
                ids = self.batches[b]
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                )
                total, count = total + nll.item(), count + ids[:, 1:].numel()
        return total / count

    def commit(self, plan, start):
        pass


PLANS = [
    PrunePlan(6, {4}),
    PrunePlan(6, {1, 5}, {3}),
    PrunePlan(6, {2, 3}, {2, 3}),  # blocks 2 and 3
    PrunePlan(6, {0}, {0, 4}),
]


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_prefix_reuse_equals_full_forwards_bit_for_bit(family, family_sources):
    model, fam = loaded(family_sources[family]), anatomy_of(family)
    windows = calibration()
    full = FullForwards(model, fam, windows, batch_windows=2)
    with PrefixObjective(model, fam, windows, batch_windows=2) as prefix:
        assert [len(b) for b in prefix.batches] == [1, 1, 2, 1]  # 1, 1, 2, ... windows
        for plan in PLANS:
            start = min(plan.drop_attention | plan.drop_mlp)
            prefix.commit(plan, start)  # hidden states kept below `start`, recomputed above it
            got = torch.cat([prefix.final_logits(b) for b in range(len(prefix.batches))])
            want = torch.cat([full.logits(plan, b) for b in range(len(full.batches))])
            assert torch.equal(got, want), (family, plan)
            prefix.commit(PrunePlan(6), 0)
        # a candidate measured from its own layer on, over the current plan's kept states, equals full forwards
        base = PrunePlan(6, {1})
        prefix.commit(base, 1)
        for layer in range(6):
            for kind in ("attention", "mlp", "block"):
                new = Move.of(kind, layer).remove(base)
                assert prefix.value(new, min(layer, 1)) == full.value(new)


def test_the_bound_only_ever_abandons_losers(family_sources):
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration(n=6)
    with PrefixObjective(model, fam, windows) as prefix:
        value = prefix.value(PrunePlan(6, {0}), 0)
        assert prefix.value(PrunePlan(6, {0}), 0, bound=value) == value  # equal to the bound: kept
        assert prefix.value(PrunePlan(6, {0}), 0, bound=value * 0.999) is None
        partial = prefix.value(PrunePlan(6, {0}), 0, batches=2)  # the first two windows only
    assert partial != value and partial > 0


def test_measured_terms_are_reused_to_the_last_bit(family_sources):
    """A plan screened, or abandoned part-way, is measured later from where it stopped, with the value a fresh
    measurement gives; a plan measured before costs nothing."""
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration(n=6)
    plan = PrunePlan(6, {2}, {4})
    with PrefixObjective(model, fam, windows) as fresh:
        fresh.block_runs = fresh.tail_runs = 0
        want = fresh.value(plan, 2)
        work = fresh.block_runs, fresh.tail_runs
    with PrefixObjective(model, fam, windows) as prefix:
        prefix.block_runs = prefix.tail_runs = 0
        partial = prefix.value(plan, 2, batches=2)
        assert prefix.tail_runs == 2  # two windows, one each
        known = partial * 2 / 6  # the first two windows' sum, over all six windows' tokens: a lower bound
        assert prefix.value(plan, 2, bound=known * 0.9) is None  # ruled out by what is known: no work
        assert prefix.tail_runs == 2
        assert prefix.value(plan, 2) == want
        assert (prefix.block_runs, prefix.tail_runs) == work  # every window once, in all
        assert prefix.value(plan, 2) == want and prefix.value(plan, 2, batches=2) == partial
        assert (prefix.block_runs, prefix.tail_runs) == work
        prefix.commit(PrunePlan(6, {1}), 1)  # the value belongs to the plan, whatever the current plan
        assert prefix.value(plan, 1) == want


def _trace(search_outcome):
    return [(s.move, s.objective) for s in search_outcome.steps]


@pytest.mark.parametrize("budget, kinds", [("attn:50%", "attention"), ("params:30%", None), ("mlp:34%", "mlp,block")])
def test_each_step_equals_brute_force(budget, kinds, family_sources):
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration()
    costs = model_costs(model, fam, {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 128}, 64, 1, "default")
    budgets = parse_budgets(budget)
    kinds_ = parse_kinds(kinds, budgets)
    full = FullForwards(model, fam, windows)
    brute = Search(full, costs, budgets, kinds_).run(swap=False)
    with PrefixObjective(model, fam, windows) as prefix:
        fast = Search(prefix, costs, budgets, kinds_).run(swap=False)
    assert [m for m, _ in _trace(fast)] == [m for m, _ in _trace(brute)]
    assert _trace(fast) == _trace(brute)  # the same moves, and the same objective values to the last bit
    assert met(budgets, fast.plan, costs) and fast.plan == brute.plan
    # and, independently, each step is the argmin over every allowed candidate, measured in full
    plan = PrunePlan(6)
    current = full.value(plan)
    for step in brute.steps:
        scores = {}
        for mv in Search(full, costs, budgets, kinds_).removals(plan):
            from skipprune.prune.budget import progress

            prog = progress(budgets, plan, mv.remove(plan), costs)
            if prog > 0:
                scores[mv] = ((full.value(mv.remove(plan)) - current) / prog, mv)
        best = min(scores.values())[1]
        assert step.move == f"remove {best}"
        plan, current = best.remove(plan), full.value(best.remove(plan))


def test_the_swap_pass_only_improves_and_keeps_the_budget(family_sources):
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration(seed=3)
    costs = model_costs(model, fam, {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 128}, 64, 1, "default")
    budgets = parse_budgets("attn:50%")
    full = FullForwards(model, fam, windows)
    with PrefixObjective(model, fam, windows) as prefix:
        out = Search(prefix, costs, budgets, ("attention",)).run(swap=True)
    assert out.objective <= out.greedy_objective
    assert met(budgets, out.plan, costs) and len(out.plan.drop_attention) == 3 and not out.plan.drop_mlp
    assert out.objective == full.value(out.plan)
    # no single exchange of a removed attention for a kept one is better
    for out_layer in out.plan.drop_attention:
        for in_layer in set(range(6)) - out.plan.drop_attention:
            swapped = PrunePlan(6, (out.plan.drop_attention - {out_layer}) | {in_layer})
            assert full.value(swapped) >= out.objective


def test_screening_with_room_for_every_candidate_is_greedy(family_sources):
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration()
    costs = model_costs(model, fam, {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 128}, 64, 1, "default")
    budgets = parse_budgets("attn:50%")
    with PrefixObjective(model, fam, windows) as prefix:
        exact = Search(prefix, costs, budgets, ("attention",)).run(swap=False)
    with PrefixObjective(model, fam, windows) as prefix:
        screened = Search(prefix, costs, budgets, ("attention",), screen=1).run(swap=False)
        wide = Search(prefix, costs, budgets, ("attention",), screen=99).run(swap=False)
    assert _trace(wide) == _trace(exact)
    assert met(budgets, screened.plan, costs) and all(step.screened > 0 for step in screened.steps)


def test_one_shot_measures_every_candidate_alone_in_full(family_sources):
    """The held-out table's "one-shot measured" strategy: each candidate removed alone from the full model, on
    every window, lowest first; measured after any search, whatever plan the objective holds then."""
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration()
    costs = model_costs(model, fam, {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 128}, 64, 1, "default")
    budgets = parse_budgets("params:30%")
    full = FullForwards(model, fam, windows)
    with PrefixObjective(model, fam, windows) as prefix:
        found = Search(prefix, costs, budgets, screen=2)
        found.run(swap=False)
        ranking = found.one_shot()
    want = sorted(((mv, full.value(mv.remove(PrunePlan(6)))) for mv in found.removals(PrunePlan(6))),
                  key=lambda x: (x[1], x[0]))  # fmt: skip
    assert ranking == want and len(ranking) == 18  # attention, MLP and block of each of 6 layers


def test_budgets_kinds_keep_and_serving_constraints(family_sources):
    model, fam = loaded(family_sources["llama"]), anatomy_of("llama")
    windows = calibration()
    config = {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 128}
    costs = model_costs(model, fam, config, 64, 1, "default")
    budgets = parse_budgets(["params:20%", "attn:34%"])  # several at once: all met
    keep = parse_keep("first:1,last:1", 6)
    with PrefixObjective(model, fam, windows) as prefix:
        out = Search(prefix, costs, budgets, ("attention", "mlp", "block"), keep).run(swap=False)
    plan = out.plan
    assert costs.removed_params(plan) >= 0.2 * costs.total_params
    assert len(plan.drop_attention) >= target(Budget("attn", 0.34), 6) == 2
    assert not (plan.drop_attention | plan.drop_mlp) & {0, 5}
    # the serving format: output layer 0 never loses attention while keeping its MLP; stand-in FFNs are counted
    serving = model_costs(model, fam, config, 64, 1, "nemotron-nas")
    assert serving.stand_in_params == 3 * 256 * 32
    mlp_only = PrunePlan(6, set(), {2})
    assert serving.removed_params(mlp_only) == costs.removed_params(mlp_only) - 3 * 256 * 32

    from skipprune.formats.nemotron_nas import NemotronNas

    def allowed(p):
        try:
            NemotronNas().check({"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 256}, p, fam, None)
        except PlanError:
            return False
        return True

    with PrefixObjective(model, fam, windows) as prefix:
        out = Search(prefix, serving, parse_budgets("attn:50%"), ("attention", "block"), allowed=allowed).run()
    first = out.plan.layers[0]
    assert first.attention or not first.mlp
    assert amount(Budget("attn", 0.5), out.plan, serving) >= 3


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("attn", "bad --budget"),
        ("attn:0%", "between 0% and 100%"),
        ("params:150%", "between 0% and 100%"),
        ("blocks:2.5", "whole number"),
        ("params:12", "takes a percentage"),
        ("speed:10%", "bad --budget"),
    ],
)
def test_bad_budgets_are_one_line_errors(spec, needle):
    with pytest.raises(PlanError, match=needle):
        parse_budget(spec)


def test_budget_parsing():
    assert parse_budget("kv:25%") == Budget("attn", 0.25)
    assert parse_budget("blocks:3") == Budget("blocks", 3)
    assert [b.spec for b in parse_budgets(["attn:33%,params:10%", "latency:5%"])] == [
        "attn:33%",
        "params:10%",
        "latency:5%",
    ]
    with pytest.raises(PlanError, match="twice"):
        parse_budgets(["attn:10%", "kv:20%"])
    assert parse_kinds(None, [Budget("attn", 0.3)]) == ("attention",)
    assert parse_kinds(None, [Budget("params", 0.3)]) == ("attention", "mlp", "block")
    assert parse_kinds("blocks,attn") == ("attention", "block")
    with pytest.raises(PlanError, match="--kinds"):
        parse_kinds("heads")
    assert parse_keep("first:2,last:1,7", 10) == {0, 1, 7, 9}
    with pytest.raises(PlanError, match="--keep"):
        parse_keep("middle:2", 10)


# -- the entry point, plan files and export ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A tiny llama with the demo model's tokenizer: search() reads text."""
    folder = make_model(tmp_path_factory.mktemp("tok") / "tiny-llama", "llama", vocab_size=2048)
    for f in DEMO_MODEL.iterdir():
        if "token" in f.name:
            shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def searched(tokenized, tmp_path_factory):
    calib = tmp_path_factory.mktemp("text") / "calibration.txt"
    text = HELDOUT.read_text(encoding="utf-8")
    calib.write_text(text[: len(text) // 2], encoding="utf-8")
    held = calib.with_name("held.txt")
    held.write_text(text[len(text) // 2 :], encoding="utf-8")
    result = skipprune.search(
        str(tokenized), "params:25%", text=str(calib), samples=3, seq_len=16, eval_text=str(held), eval_samples=4,
        eval_seq_len=16,
    )  # fmt: skip
    path = result.save(calib.with_name("plan.json"))
    return result, path


def test_search_writes_a_plan_file_with_its_provenance(searched):
    result, path = searched
    record = PlanFile.load(path)
    assert record.plan == result.plan and record.model.num_layers == 6 and record.model.model_type == "llama"
    s = record.search
    assert s.objective == "kl" and s.budgets == ["params:25%"] and s.text == "file calibration.txt"
    assert s.windows == 3 and s.tokens == 48 and s.steps and s.evaluations > 0 and s.forward_equivalents > 0
    assert s.steps[-1].params_removed >= 0.25 and s.objective_value == s.steps[-1].objective
    strategies = [r.strategy for r in s.comparison]
    assert strategies[:2] == ["source (nothing removed)", "search"] and "last-N (blocks)" in strategies
    assert "one-shot measured" in strategies and s.eval_text == "file held.txt"
    assert all(math.isfinite(r.perplexity) for r in s.comparison)
    assert json.loads(path.read_text())["kind"] == "skipprune plan"


def test_a_plan_file_round_trips_into_export(searched, tokenized, tmp_path):
    result, path = searched
    out = skipprune.export(tokenized, tmp_path / "out", plan_file=path).output
    record = ExportRecord.load(out)
    assert record.plan == result.plan and record.search == PlanFile.load(path).search
    assert record.verification.numerics.max_abs_logit_diff == 0
    card = (out / "README.md").read_text()
    assert "## How the plan was chosen" in card and "search.png" in card and (out / "search.png").is_file()
    assert "Held-out perplexity at the same budget, on text the search never saw" in card
    assert "| one-shot measured |" in card
    # the CLI takes the same file
    proc = run("export", tokenized, tmp_path / "cli", "--plan", path)
    assert proc.returncode == 0, proc.stderr
    assert ExportRecord.load(tmp_path / "cli").plan == result.plan


def test_bad_plan_files_are_one_line_errors(searched, tokenized, tmp_path, family_sources):
    _, path = searched
    out = tmp_path / "out"
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 2, "model": "x", "perplexity": 9.0}))
    cases = [
        (("--plan", tmp_path / "missing.json"), "no such plan file"),
        (("--plan", tmp_path / "broken.json"), "unreadable"),
        (("--plan", tmp_path / "results.json"), "is not a skipprune plan file but a results file"),
        (("--plan", path, "--drop-attn", "1"), "either --plan FILE or --drop"),
    ]
    for args, needle in cases:
        assert_clean_failure(run("export", tokenized, out, *args), needle, out)
    # a plan made for another model
    other = make_model(tmp_path / "other", "llama", num_hidden_layers=8)
    assert_clean_failure(run("export", other, out, "--plan", path), "the plan was made for tiny-llama", out)
    with pytest.raises(RecordError, match="not a skipprune plan file"):
        PlanFile.load(tmp_path / "results.json")


def test_cli_search_and_its_errors(tokenized, tmp_path):
    plan = tmp_path / "p.json"
    (tmp_path / "short.txt").write_text("zqxj vbnm")
    proc = run(
        "search", tokenized, "--budget", "attn:34%", "--text", "bundled", "--samples", "2", "--seq-len", "16",
        "--out", plan, "--plot", tmp_path / "s.png",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"--plan {plan}" in proc.stdout and "remove attention of layers" in proc.stdout
    assert PlanFile.load(plan).search.kinds == ["attention"] and (tmp_path / "s.png").is_file()
    for args, needle in [
        (("--budget", "attn:40"), "takes a percentage"),
        (("--budget", "attn:40%", "--kinds", "heads"), "--kinds"),
        (("--budget", "attn:40%", "--text", tmp_path / "none.txt"), "no such file"),
        (("--budget", "attn:40%", "--eval-text", "bundled"), "overlaps the calibration text"),
        (("--budget", "attn:40%", "--eval-text", tmp_path / "short.txt"), "fewer than one window"),
        (("--budget", "blocks:6"), "at most 5 can go"),
    ]:
        assert_clean_failure(run("search", tokenized, "--samples", "2", "--seq-len", "16", *args), needle)
    # known only once the model's weights are counted: refused after loading, before any measuring
    proc = run("search", tokenized, "--budget", "params:80%", "--kinds", "attention", "--samples", "2")
    assert_clean_failure(proc, "cannot be met with --kinds attention (at most params", after_progress=True)
    assert "step 1" not in proc.stderr


def test_analyze_points_to_search():
    proc = run("analyze", DEMO_MODEL, "--samples", "1", "--seq-len", "16", "--suggest", "attn:25%")
    assert proc.returncode == 0, proc.stderr
    assert "skipprune search" in proc.stdout


def test_weights_on_disk_search_like_in_memory(tokenized):
    """Block by block from disk (each block read once per candidate, run over all windows): the same plan and
    the same objective at every step as in memory."""
    options = dict(text="bundled", samples=3, seq_len=16, swap=True)
    in_memory = skipprune.search(str(tokenized), "attn:34%", **options).record.search
    on_disk = skipprune.search(str(tokenized), "attn:34%", device_map="stream", **options).record.search
    assert [(s.move, s.objective) for s in on_disk.steps] == [(s.move, s.objective) for s in in_memory.steps]
