"""What a careless or hostile input finds: broken sources, poisoned records, concurrent exports, signals, and
every subcommand's options with invalid values. Each ends in one line, a non-zero exit, nothing half-written."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.cli import main
from skipprune.data import DEMO_MODEL
from skipprune.records import ExportRecord

from common import EXE, assert_clean_failure, digest, run


@pytest.fixture
def src(family_sources, tmp_path):
    return Path(shutil.copytree(family_sources["llama"], tmp_path / "src"))


def edit_tensors(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


# -- sources that contradict themselves: caught before anything is written, with or without --no-verify --------


BROKEN_SOURCES = {
    "missing tensor": (lambda f: edit_tensors(f, lambda t: t.pop("model.layers.2.mlp.down_proj.weight")), "is missing"),
    "shape contradicts config": (lambda f: edit_config(f, intermediate_size=64), "config.json does not match"),
    "config claims fewer layers": (lambda f: edit_config(f, num_hidden_layers=5), "hold layers up to 5"),
    "config claims more layers": (lambda f: edit_config(f, num_hidden_layers=7), "hold only 6 layers"),
    "layer count not a number": (lambda f: edit_config(f, num_hidden_layers="four"), "not a positive whole number"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SOURCES))
@pytest.mark.parametrize("verify", ["--verify", "--no-verify"])
def test_broken_sources_are_refused_before_writing(src, tmp_path, case, verify):
    damage, needle = BROKEN_SOURCES[case]
    damage(src)
    before = digest(src)
    out = tmp_path / "out"
    proc = run("export", src, out, "--drop-attn", "1", verify)
    assert_clean_failure(proc, needle, out)
    assert "please report" not in proc.stderr and "--no-verify" not in proc.stderr  # the source's fault, said so
    assert digest(src) == before


def test_nan_weights_are_blamed_on_the_source(src, tmp_path):
    edit_tensors(src, lambda t: t["model.layers.1.mlp.up_proj.weight"].fill_(float("nan")))
    proc = run("export", src, tmp_path / "out", "--drop-attn", "4")
    assert_clean_failure(proc, "model.layers.1.mlp.up_proj.weight holds NaN", tmp_path / "out", after_progress=True)


def test_legacy_buffers_that_transformers_ignores_are_left_out(src, tmp_path):
    legacy = "model.layers.0.self_attn.rotary_emb.inv_freq"
    edit_tensors(src, lambda t: t.update({legacy: torch.arange(4, dtype=torch.float32)}))
    result = skipprune.export(src, tmp_path / "out", drop_attn="3")
    assert result.record.ignored_tensors == [legacy]
    assert result.record.verification.numerics.max_abs_logit_diff == 0
    assert legacy not in load_file(tmp_path / "out" / "model.safetensors")


def test_no_verify_still_checks_what_the_model_expects(family_sources, tmp_path):
    result = skipprune.export(family_sources["phi3"], tmp_path / "out", drop_mlp="2", verify_numerics=False)
    check = result.record.verification
    assert check.structure.model_expects_them and check.numerics is None and check.numerics_skipped == "--no-verify"


# -- records: checked before the folder (or the Hub) is touched ---------------------------------------------


@pytest.fixture
def export_dir(family_sources, tmp_path):
    out = tmp_path / "pruned"
    skipprune.export(family_sources["llama"], out, drop_attn="last:2", verify_numerics=False)
    return out


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "unreadable"),
        ("", "unreadable"),
        ('{"schema_version": 2, "model": "x", "params": "many"}', "params must be a whole number"),
        ('{"schema_version": 2, "params": 3}', "model is missing"),
        ('{"schema_version": 2, "model": "x", "speed": {"device": "cpu"}}', "speed.dtype is missing"),
        ('{"schema_version": 99, "model": "x"}', "newer than this skipprune reads"),
        ("[1, 2]", "is not a results file"),
    ],
)
def test_card_refuses_bad_results_without_touching_the_export(export_dir, tmp_path, content, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    before = digest(export_dir)
    assert_clean_failure(run("card", export_dir, "--results", bad), needle)
    assert digest(export_dir) == before
    assert run("card", export_dir).returncode == 0  # the export still works


def test_card_on_broken_records(export_dir):
    (export_dir / "skipprune.json").write_text("")
    assert_clean_failure(run("card", export_dir), "skipprune.json: unreadable")
    (export_dir / "skipprune.json").write_text('{"schema_version": 2, "plan": {"source_num_layers": 2}}')
    assert_clean_failure(run("card", export_dir), "source is missing")


def test_records_round_trip(export_dir):
    record = ExportRecord.load(export_dir)
    assert ExportRecord.from_dict(record.to_dict()) == record
    data = record.to_dict()
    data["verification"]["numerics"] = "skipped"  # version 1 wrote a skipped check as a string
    del data["schema_version"]
    old = ExportRecord.from_dict(data)
    assert old.verification.numerics is None and old.verification.numerics_skipped == "skipped"


def test_unknown_record_fields_are_tolerated_with_a_warning(export_dir, caplog):
    data = json.loads((export_dir / "skipprune.json").read_text())
    (export_dir / "skipprune.json").write_text(json.dumps({**data, "from_the_future": 1}))
    assert ExportRecord.load(export_dir).plan.drop_attention == {4, 5}
    assert "from_the_future" in caplog.text


# -- concurrency, signals, late failures --------------------------------------------------------------------


def test_two_exports_to_one_output(family_sources, tmp_path):
    out = tmp_path / "out"
    cmd = [EXE, "export", family_sources["qwen2"], out, "--drop-attn", "1-3"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.run(cmd, capture_output=True, text=True)
    _, first_err = first.communicate()
    # Exactly one wins (whichever reaches the lock first); the other fails in one line, touching nothing: at
    # the lock, or, when the winner has already published, at the check made again under the lock.
    stderr = {first.returncode: first_err, second.returncode: second.stderr}
    assert sorted(stderr) == [0, 1]
    assert "another skipprune export" in stderr[1] or "already exists" in stderr[1]
    assert AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True) is not None
    assert not list(tmp_path.glob(".out.skipprune-*"))


def test_output_published_meanwhile_is_refused_under_the_lock(tmp_path):
    """The output check is made again once the lock is held, so an export that waited out another one's publish
    fails before writing anything, instead of after a whole export."""
    from skipprune.errors import OutputError
    from skipprune.export.staging import staging

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="already exists"), staging(out, overwrite=False):
        pytest.fail("the staging folder was made for an OUTPUT that exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staging(out, overwrite=True) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path


def test_sigterm_cleans_up(family_sources, tmp_path):
    """SIGTERM while the partial folder exists (and once right at the start): exit 143, nothing left behind."""
    out = tmp_path / "out"
    for wait_for_partial in (True, False):
        proc = subprocess.Popen(
            [EXE, "export", family_sources["gemma2"], out, "--drop-attn", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while wait_for_partial and not list(tmp_path.glob(".out.skipprune-partial-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.01)
        if not wait_for_partial:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 143
        assert not out.exists() and not list(tmp_path.glob(".out.skipprune-*"))  # no partial folder, no lock


def test_disk_full_while_writing_small_files(src, tmp_path, monkeypatch):
    pipeline = importlib.import_module("skipprune.export.pipeline")  # skipprune.export is also the API function

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "_write_side_files", full)
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o"), "--drop-attn", "1"])
    assert res.exit_code == 1 and "error: disk full" in res.output
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.skipprune-*"))


def test_a_write_back_failure_of_a_shard_fails_the_export(src, tmp_path, monkeypatch):
    """Shards are fsynced in a background thread while they are checked: its failure must not be lost."""
    system = importlib.import_module("skipprune.system")
    real = system.fsync_path

    def failing(path):
        if str(path).endswith(".safetensors"):
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(system, "fsync_path", failing)
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o"), "--drop-attn", "1"])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "flushing o to disk failed (Input/output error)" in errors[0]
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.skipprune-*"))


def test_every_file_is_flushed_once_before_the_export_appears(src, tmp_path, monkeypatch):
    """The staging folder is flushed as a whole before its rename, so the small files (records, card) are not
    flushed one by one as they are written: that fsync waited behind the shards' write-back."""
    system = importlib.import_module("skipprune.system")
    staging = importlib.import_module("skipprune.export.staging")
    real_fsync, real_fsync_path, real_publish = os.fsync, system.fsync_path, staging._publish
    flushed, calls, published = [], [], []

    def fsync_path(path):
        flushed.append(Path(path).name)
        real_fsync_path(path)

    def publish(tmp, out, overwrite):
        published.append(list(flushed))
        real_publish(tmp, out, overwrite)

    monkeypatch.setattr(system, "fsync_path", fsync_path)
    monkeypatch.setattr(staging, "fsync_path", fsync_path)  # (its own name for it: the folder above, last)
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(staging, "_publish", publish)
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o"), "--drop-attn", "1"])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert {"skipprune.json", "README.md", "config.json"} <= set(files)
    assert set(files) <= set(published[0]), "a file was published before it was flushed"
    assert len(calls) == len(flushed), "something was flushed outside the flush of the whole folder"
    assert len(flushed) == len(set(flushed)), f"flushed more than once: {flushed}"


@pytest.mark.parametrize("which", [2, -1])  # a tensor in the middle (found while copying), and the last one
def test_a_byte_written_wrong_fails_the_export(src, tmp_path, monkeypatch, which):
    """The bytes are compared behind the copy, in a thread: a difference still fails the export, in one line,
    whether the copy is still going when it is found or has ended."""
    writer = importlib.import_module("skipprune.export.writer")

    def fill(path, tensors, pos, fds, progress=None, check=None):
        def corrupting(t, where):
            if t is tensors[which]:
                with open(where.file, "r+b") as f:
                    f.seek(where.start)
                    byte = f.read(1)[0]
                    f.seek(where.start)
                    f.write(bytes([byte ^ 1]))
            check(t, where)

        real_fill(path, tensors, pos, fds, progress, corrupting)

    real_fill = writer._fill
    monkeypatch.setattr(writer, "_fill", fill)
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o"), "--drop-attn", "1", "--no-verify"])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "differ from the source" in errors[0], res.output
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.skipprune-*"))


def test_dtype_conversion_is_reported_as_such(family_sources, tmp_path):
    proc = run("export", family_sources["llama"], tmp_path / "o", "--drop-attn", "1", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert "converted to bfloat16" in proc.stderr and "identical" not in proc.stderr


def test_a_bad_path_fails_before_torch_is_imported(tmp_path):
    code = (
        "import sys\nfrom skipprune.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    for args in (
        ["export", str(tmp_path / "nope"), str(tmp_path / "o"), "--drop-attn", "1"],
        ["eval", str(tmp_path / "nope")],
        ["analyze", str(tmp_path / "nope")],
    ):
        proc = subprocess.run([shutil.which("python"), "-c", code, *args], capture_output=True, text=True)
        assert proc.stdout.strip() == "False", (args, proc.stdout, proc.stderr)
        assert "no such folder" in proc.stderr


# -- every subcommand, invalid values: one line, exit 1 (reported) or 2 (malformed command line) -------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    export = root / "export"
    skipprune.export(DEMO_MODEL, export, drop_attn="last:2", verify_numerics=False)
    (root / "file").write_text("not a folder")
    (root / "folder").mkdir()
    (root / "plain").mkdir()
    (root / "plain" / "config.json").write_text("{}")
    (root / "plain" / "model.safetensors").write_bytes(b"")
    from tiny import make_model

    make_model(root / "other-vocab", "llama", vocab_size=64)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(DEMO_MODEL / name, root / "other-vocab" / name)
    return root


S, E = "{SRC}", "{EXPORT}"
CASES = [
    # export
    ("export", [S, "{OUT}", "--drop-attn", "40"], 1, "out of range"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--max-shard-size", "nan"], 1, "bad size"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--max-shard-size", "0"], 1, "bad size"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--dtype", "int8"], 2, "'--dtype'"),
    ("export", [S, "{OUT}", "--adaptive-ffn", "cold_start=-5"], 1, "cold_start=-5"),
    ("export", [S, "{OUT}", "--adaptive-ffn", "sim_threshold=nan"], 1, "finite"),
    ("export", [S, "{OUT}", "--adaptive-ffn", "max_skips=0"], 1, "max_skips=0"),
    ("export", [S, "{OUT}", "--adaptive-ffn", "cold_start=6,cold_end=6"], 1, "cover all"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--revision", "main"], 1, "--revision applies to Hub ids"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--push-to", "bad id!"], 1, "invalid repo id"),
    ("export", [S, "{OUT}", "--drop-attn", "1", "--push-to", "me/x"], 1, "no Hugging Face token"),
    ("export", [S, "{ROOT}/file/sub", "--drop-attn", "1"], 1, "is a file"),
    ("export", [S, "{ROOT}/file", "--drop-attn", "1"], 2, "file"),
    ("export", [S, "{OUT}", "--bogus"], 2, "No such option"),
    ("export", [S], 2, "Missing argument"),
    (
        "export",
        ["{ROOT}/other-vocab", "{OUT}", "--drop-attn", "1", "--keep-last-layer", "--drop-mlp", "last:6"],
        1,
        "before the final one",
    ),
    # eval
    ("eval", [E, "--seq-len", "0"], 2, "--seq-len"),
    ("eval", [E, "--seq-len", "1"], 2, "--seq-len"),
    ("eval", [E, "--seq-len", "100000", "--no-speed"], 1, "--seq-len 100000"),
    ("eval", [E, "--limit", "0"], 2, "--limit"),
    ("eval", [E, "--json", "{ROOT}/missing/r.json"], 2, "does not exist"),
    ("eval", [E, "--json", "{ROOT}/folder"], 2, "is a folder"),
    ("eval", [E, "--text", "{ROOT}/missing.txt"], 1, "no such file"),
    ("eval", [E, "--tasks", "{ROOT}/missing.yaml"], 1, "task file"),
    ("eval", [E, "--baseline", "{ROOT}/other-vocab", "--no-speed"], 1, "different vocabularies"),
    ("eval", [E, "--device", "tpu"], 2, "'--device'"),
    ("eval", ["{ROOT}/folder"], 1, "no config.json"),
    # analyze
    ("analyze", [S, "--seq-len", "0"], 2, "--seq-len"),
    ("analyze", [S, "--samples", "0"], 2, "--samples"),
    ("analyze", [S, "--suggest", "everything"], 1, "bad --suggest"),
    ("analyze", [S, "--plot", "{ROOT}/missing/a.png"], 2, "does not exist"),
    ("analyze", [S, "--json", "{ROOT}/folder"], 2, "is a folder"),
    ("analyze", [E], 1, "already a skipprune export"),
    ("analyze", [S, "--seq-len", "100000"], 1, "fewer than one window"),
    # sweep
    ("sweep", [S, "--samples", "0"], 2, "--samples"),
    ("sweep", [S, "--seq-len", "1"], 2, "--seq-len"),
    ("sweep", [S, "--plot", "{ROOT}/missing/s.png"], 2, "does not exist"),
    ("sweep", [S, "--tasks", "{ROOT}/missing.yaml"], 1, "task file"),
    ("sweep", [S, "--limit", "-1"], 2, "--limit"),
    # card
    ("card", ["{ROOT}/missing"], 2, "does not exist"),
    ("card", ["{ROOT}/folder"], 1, "no skipprune.json"),
    ("card", [E, "--results", "{ROOT}/missing.json"], 2, "does not exist"),
    # push
    ("push", [E, "bad id!"], 1, "invalid repo id"),
    ("push", ["{ROOT}/folder", "me/x"], 1, "not a model folder"),
    ("push", [E, "me/x"], 1, "no Hugging Face token"),
    # demo
    ("demo", ["{ROOT}/folder"], 1, "already exists"),
    ("demo", ["{ROOT}/file"], 2, "file"),
]


@pytest.mark.parametrize("command,args,code,needle", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_subcommand_rejects_bad_values_in_one_line(fixtures, tmp_path, command, args, code, needle):
    values = {
        "SRC": str(DEMO_MODEL),
        "EXPORT": str(fixtures / "export"),
        "OUT": str(tmp_path / "out"),
        "ROOT": str(fixtures),
    }
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")}
    before = digest(fixtures)
    proc = run(command, *[a.format(**values) for a in args], env=env)
    assert_clean_failure(proc, needle, tmp_path / "out")
    assert proc.returncode == code, proc.stderr
    assert digest(fixtures) == before
