"""skipprune runs a model's own code only when it is exactly skipprune's, or when the user opts in."""

from __future__ import annotations

import json
import shutil

import pytest

import skipprune
from skipprune.data import DEMO_MODEL

from common import assert_clean_failure, run

PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('pwned')\n\nclass Model:\n    pass\n"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("security") / "pruned"
    skipprune.export(DEMO_MODEL, out, drop_attn="last:2", verify_numerics=False)
    return out


def poisoned(export_dir, tmp_path, edit):
    """A copy of a genuine export with a helper module that writes a marker file when imported, and `edit`
    applied to (config.json, tokenizer_config.json) to point something at it."""
    fake = shutil.copytree(export_dir, tmp_path / "fake")
    marker = tmp_path / "marker"
    (fake / "helper_skipprune.py").write_text(PAYLOAD.format(marker=str(marker)))
    config = json.loads((fake / "config.json").read_text())
    tokenizer = json.loads((fake / "tokenizer_config.json").read_text())
    edit(config, tokenizer)
    (fake / "config.json").write_text(json.dumps(config))
    (fake / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return fake, marker


ATTACKS = {
    "model class": lambda c, t: c["auto_map"].update(AutoModelForCausalLM="helper_skipprune.Model"),
    "config class": lambda c, t: c["auto_map"].update(AutoConfig="helper_skipprune.Model"),
    "extra auto class": lambda c, t: c["auto_map"].update(AutoModel="helper_skipprune.Model"),
    "tokenizer class": lambda c, t: t.update(auto_map={"AutoTokenizer": ["helper_skipprune.Model", None]}),
    "stock model type": lambda c, t: c.update(model_type="llama"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_foreign_code_next_to_our_files_is_not_run(export_dir, tmp_path, attack, command):
    fake, marker = poisoned(export_dir, tmp_path, ATTACKS[attack])
    extra = ["--no-speed", "--seq-len", "64"] if command == "eval" else ["--samples", "1", "--seq-len", "64"]
    assert_clean_failure(run(command, fake, *extra), "--trust-remote-code")
    assert not marker.exists()


def test_our_own_code_still_loads_without_the_flag(export_dir, tmp_path):
    proc = run("eval", export_dir, "--no-speed", "--seq-len", "64", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["model"] == export_dir.name  # a folder name, no path


def test_the_user_can_opt_in(export_dir, tmp_path):
    fake, marker = poisoned(export_dir, tmp_path, ATTACKS["model class"])
    proc = run("eval", fake, "--no-speed", "--seq-len", "64", "--trust-remote-code")
    assert marker.exists()  # the user's explicit choice runs the folder's code (which here is not a model)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
