"""What must hold under every transformers release skipprune supports (CI runs this file, marked `compat`, on the
lowest supported release too, beside the whole suite on the newest):

- a layer without a token mixer anywhere (first, last, all but one) exports, loads, generates, and cached
  decoding equals uncached; the cache has slots only for the kept mixers;
- exports written by skipprune 0.4.0 (tests/data/v0.4.0, see scripts/make_v040_fixtures.py) load and generate,
  or `skipprune refresh` repairs them: code files replaced, logits unchanged, tensors byte-identical;
- every output format, for ten families including hybrids and a multimodal wrapper, and the family study.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_all_families import check_export, tiny_source
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.export.support import support
from skipprune.measure.speed import cache_of
from skipprune.prune.plan import PrunePlan

from common import assert_clean_failure, run
from tiny import make_model

pytestmark = pytest.mark.compat

FIXTURES = Path(__file__).parent / "data" / "v0.4.0"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
CODE = {
    "configuration_skipprune.py",
    "modeling_skipprune.py",
    "configuration_skipprune_nas.py",
    "modeling_skipprune_nas.py",
}


def _decode(model, ids):
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        return model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw)


@pytest.mark.parametrize(
    "family,attention",
    [
        ("llama", {0}),  # the first layer: the stock model reads the sequence length there
        ("llama", {5}),
        ("llama", {0, 1, 2, 3, 4}),  # all but one
        ("gemma3_text", {0, 3}),  # sliding-window and full layers: each kept slot keeps its kind
        ("qwen2", {0, 4}),
    ],
)
def test_a_layer_without_attention_anywhere(family, attention, tmp_path):
    src = make_model(tmp_path / "src", family)
    plan = PrunePlan(6, set(attention), {2} - set(attention))
    check_export(src, tmp_path / "out", plan)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    ids = torch.randint(3, 120, (1, 12), generator=torch.Generator().manual_seed(3))
    cached, uncached = _decode(model, ids)  # beyond the sliding window (8)
    assert torch.equal(cached, uncached)
    stock = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        full = stock(input_ids=ids, use_cache=True)
    kept = [i for i in range(6) if i not in attention]
    cache, stock_cache = cache_of(out), cache_of(full)
    assert [type(layer) for layer in cache.layers] == [type(stock_cache.layers[i]) for i in kept]
    assert all(layer.keys.shape[-2] > 0 for layer in cache.layers)


def test_static_cache_is_passed_not_named(tmp_path):
    """generate(cache_implementation=...) would build a slot per layer: refused with the way to do it."""
    from transformers import StaticCache

    src = make_model(tmp_path / "src", "llama")
    skipprune.export(src, tmp_path / "out", PrunePlan(6, {0, 3}, set()))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    ids = torch.randint(3, 120, (1, 6), generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="new_cache"):
        model.generate(ids, max_new_tokens=4, do_sample=False, cache_implementation="static")
    with torch.no_grad():
        static = model.generate(
            ids, max_new_tokens=4, do_sample=False, **{model._cache_arg: model.new_cache(StaticCache, max_cache_len=16)}
        )
    assert torch.equal(static, _decode(model, ids)[1][:, :10])


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_v040_exports_load_or_are_refreshed(name, tmp_path):
    export = shutil.copytree(FIXTURES / name, tmp_path / name)
    ref = load_file(str(FIXTURES / f"{name}.reference.safetensors"))
    before = _digests(export)
    proc = run("refresh", export)
    assert proc.returncode == 0, proc.stderr
    assert "refreshed" in proc.stdout and "logits equal to its previous code" in proc.stdout
    after = _digests(export)
    changed = {n for n in before if before[n] != after[n]}
    assert changed <= CODE | {"skipprune.json"} and changed & CODE and set(after) == set(before)
    record = json.loads((export / "skipprune.json").read_text())
    (entry,) = record["refreshes"]
    assert entry["previous_code"].startswith("skipprune ") and "0.4.0" in entry["previous_code"]
    assert entry["max_abs_logit_diff"] == 0.0 and entry["cached_equals_uncached"]
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    assert torch.equal(logits, ref["logits"])
    cached, uncached = _decode(model, ref["input_ids"][:1, :6])
    assert torch.equal(cached, uncached) and torch.equal(uncached[:, :12], ref["greedy"])
    again = run("refresh", export)
    assert again.returncode == 0 and "already holds" in again.stdout


def test_eval_of_an_export_with_older_code_says_to_refresh(tmp_path):
    export = shutil.copytree(FIXTURES / "llama-attn0", tmp_path / "export")
    assert_clean_failure(run("eval", export, "--no-speed"), f"skipprune refresh {export}")


def test_refresh_checks_against_the_source_and_refuses_unknown_code(tmp_path):
    src = make_model(tmp_path / "src", "llama")
    out = tmp_path / "out"
    skipprune.export(src, out, PrunePlan(6, {0, 3}, {4}))
    modeling = out / "modeling_skipprune.py"
    modeling.write_text(modeling.read_text() + "\n# edited by hand\n")
    proc = run("refresh", out)
    assert_clean_failure(proc, "not a skipprune release's")
    assert modeling.read_text().endswith("# edited by hand\n")  # nothing changed
    proc = run("refresh", out, "--source", src)
    assert proc.returncode == 0, proc.stderr
    assert "the bypassed source" in proc.stdout
    assert_clean_failure(run("refresh", "someone/model"), "hf download someone/model --local-dir DIR")
    stock = tmp_path / "stock"
    skipprune.export(src, stock, PrunePlan(6, {1}, {1}))
    assert "no code to refresh" in run("refresh", stock).stdout


def test_an_untested_transformers_says_so_in_one_line(tmp_path):
    src = make_model(tmp_path / "src", "llama")
    skipprune.export(src, tmp_path / "out", PrunePlan(6, {0}, set()))
    script = (
        "import sys, transformers; transformers.__version__ = sys.argv[2]\n"
        "from transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    )
    newer = subprocess.run([sys.executable, "-c", script, tmp_path / "out", "5.99.0"], capture_output=True, text=True)
    assert newer.returncode == 0, newer.stderr
    lines = [line for line in newer.stderr.splitlines() if "tested with transformers" in line]
    assert len(lines) == 1 and "pip install 'transformers>=5.23,<5.26'" in lines[0] and "skipprune refresh" in lines[0]
    older = subprocess.run([sys.executable, "-c", script, tmp_path / "out", "5.22.0"], capture_output=True, text=True)
    assert older.returncode != 0 and "needs transformers >= 5.23 (found 5.22.0)" in older.stderr


# Ten families, two of them hybrids and one a multimodal wrapper: every format on the lowest supported release.
COMPAT_FAMILIES = ["gemma2", "gemma3", "gemma3_text", "llama", "mistral", "mixtral", "olmo2", "phi3", "qwen3"]
COMPAT_HYBRIDS = ["lfm2", "qwen3_5_text"]


@pytest.mark.parametrize("model_type", COMPAT_FAMILIES + COMPAT_HYBRIDS)
def test_every_format_on_supported_transformers(model_type, tmp_path):
    src = tiny_source(tmp_path / "src", model_type)
    assert support(model_type)["attention"] == "yes"
    check_export(src, tmp_path / "blocks", PrunePlan(4, {1}, {1}))  # the stock architecture
    check_export(src, tmp_path / "sublayers", PrunePlan(4, {0, 3}, {2, 3}))  # layer 0 without its mixer


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_serving_format_on_supported_transformers(family, tmp_path):
    src = make_model(tmp_path / "src", family, intermediate_size=256, sliding_window=None)
    plan = PrunePlan(6, {1, 3}, {2, 3})
    skipprune.export(src, tmp_path / "out", plan, format="nemotron-nas")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    cached, uncached = _decode(model, torch.randint(3, 120, (1, 12), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(cached, uncached)


def test_the_shipped_code_is_listed_as_released():
    """A later skipprune must recognise today's files in an export (`refresh` runs them only if listed)."""
    from skipprune.remote import NAS_FILES, RELEASED, REMOTE_DIR

    missing = [n for n in NAS_FILES if hashlib.sha256((REMOTE_DIR / n).read_bytes()).hexdigest() not in RELEASED]
    assert not missing, f"{missing}: run python scripts/record_released_code.py"


def test_a_plan_whose_cache_fails_is_refused_naming_its_layers(tmp_path, monkeypatch):
    """Where the cache fails for one pattern of layers only, that plan is refused before anything is written, and
    the family still loses attention elsewhere."""
    from skipprune.errors import PlanError
    from skipprune.families import check
    from skipprune.families.refusal import Refusal

    src = make_model(tmp_path / "src", "llama")
    real = check._decodes.__wrapped__

    def fails_at_first(model_type, config_json, splits):
        failure = Refusal.attention("its cache fails with mixer-free layers (X)", scope="plan")
        return failure if not splits[0][1] else real(model_type, config_json, splits)

    monkeypatch.setattr(check, "_decodes", fails_at_first)
    with pytest.raises(PlanError, match=r"llama: without the attention of layers 0,3, its cache fails .*transformers"):
        skipprune.export(src, tmp_path / "out", PrunePlan(6, {0, 3}, set()))
    assert not (tmp_path / "out").exists()
    skipprune.export(src, tmp_path / "out", PrunePlan(6, {2, 3}, set()))


def test_refresh_streams_an_export_larger_than_memory(tmp_path, monkeypatch):
    """With too little memory for the export, both checks run with its weights on disk: the same verdict."""
    from skipprune.export import refresh as module

    monkeypatch.setattr(module, "available_memory", lambda: 1)
    src = make_model(tmp_path / "src", "llama")
    export = shutil.copytree(FIXTURES / "llama-attn0", tmp_path / "export")
    entry = module.refresh(export).refresh
    assert entry.max_abs_logit_diff == 0.0 and entry.cached_equals_uncached
    out = tmp_path / "out"
    skipprune.export(src, out, PrunePlan(6, {0, 3}, {4}))
    (out / "modeling_skipprune.py").write_text((FIXTURES / "llama-attn0" / "modeling_skipprune.py").read_text())
    entry = module.refresh(out, source=str(src)).refresh
    assert entry.verified_against.startswith("the bypassed source") and entry.max_abs_logit_diff == 0.0


def test_the_cache_check_can_fail(monkeypatch):
    """The check the study and every export run: a cache that gives each layer a slot and leaves the mixers'
    numbers alone (0.4.0's layout, without transformers' placeholders) restarts positions, and is caught."""
    from transformers import AutoConfig

    from skipprune.families import check
    from skipprune.families.config import keep_layers
    from skipprune.remote import modeling_skipprune

    from tiny import COMMON, anatomy_of

    family, plan = anatomy_of("llama"), PrunePlan(6, {0, 3}, {4})
    output = keep_layers(AutoConfig.for_model("llama", **COMMON).to_dict(), [layer.source for layer in plan.layers], 6)
    splits = tuple((family.at(layer.source), layer.attention) for layer in plan.layers)
    assert check._decodes.__wrapped__("llama", json.dumps(output, sort_keys=True), splits) is None

    def every_layer_a_slot(self, text_config, mixers):
        self.text_config, self.layers = text_config, list(range(len(mixers)))

    monkeypatch.setattr(modeling_skipprune.KeptMixerCache, "__init__", every_layer_a_slot)
    refusal = check._decodes.__wrapped__("llama", json.dumps(output, sort_keys=True), splits)
    assert refusal.what == "attention" and "differs" in refusal.why
