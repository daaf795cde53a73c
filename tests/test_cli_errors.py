"""Bad input through the installed `skipprune` command: one line, exit != 0, no traceback, nothing left."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from skipprune.cli import main

from common import assert_clean_failure, digest, run


@pytest.fixture
def src(family_sources, tmp_path):
    """A private copy of the llama source, so damaging it cannot affect other tests."""
    return Path(shutil.copytree(family_sources["llama"], tmp_path / "src"))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--drop-attn", "40"], "out of range"),
        (["--drop-attn", "last:x"], "malformed SPEC"),
        ([], "empty plan"),
        (["--drop-blocks", "0-5"], "all 6 blocks"),
        (["--drop-attn", "0-5"], "attention from every layer"),
        (["--drop-attn", "1", "--max-shard-size", "lots"], "bad size"),
    ],
)
def test_bad_plans(src, tmp_path, args, needle):
    before = digest(src)
    out = tmp_path / "out"
    assert_clean_failure(run("export", src, out, *args), needle, out)
    assert digest(src) == before


def test_missing_path_and_no_config(tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run("export", tmp_path / "nope", out, "--drop-attn", "1"), "no such folder", out)
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run("export", tmp_path / "empty", out, "--drop-attn", "1"), "no config.json", out)


def test_what_is_not_a_decoder_only_causal_lm(src, tmp_path):
    """Any decoder-only causal LM transformers builds is supported; anything else gets one line saying why."""
    cfg = json.loads((src / "config.json").read_text())
    cases = [
        ({**cfg, "model_type": "not-a-model"}, "does not know model_type 'not-a-model'"),
        ({"model_type": "t5", "num_layers": 2, "is_encoder_decoder": True}, "t5 is an encoder-decoder model"),
        ({"model_type": "bert", "num_hidden_layers": 2}, "bert is an encoder model"),
        ({"model_type": "clip", "num_hidden_layers": 2}, "clip has no causal-LM head"),
        ({k: v for k, v in cfg.items() if k != "model_type"}, "config.json has no model_type"),
        # the weights are a llama's: the gpt2 model that config describes needs other tensors
        ({"model_type": "gpt2", "n_layer": 6, "n_embd": 32, "n_head": 4}, "missing from the shards"),
    ]
    for config, needle in cases:
        (src / "config.json").write_text(json.dumps(config))
        assert_clean_failure(run("export", src, tmp_path / "out", "--drop-blocks", "1"), needle, tmp_path / "out")


def test_output_exists_equals_or_contains_source(src, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    proc = run("export", src, tmp_path / "taken", "--drop-attn", "1")
    assert_clean_failure(proc, "already exists")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    before = digest(src)
    assert_clean_failure(run("export", src, src, "--drop-attn", "1", "--overwrite"), "is the source folder")
    assert_clean_failure(run("export", src, src / "sub", "--drop-attn", "1"), "inside it")
    assert_clean_failure(run("export", src, tmp_path, "--drop-attn", "1", "--overwrite"), "contains the source")
    assert digest(src) == before


def test_truncated_and_corrupt_shards(src, tmp_path):
    shard = src / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    assert_clean_failure(run("export", src, tmp_path / "o", "--drop-attn", "1"), "truncated shard", tmp_path / "o")
    shard.write_bytes(struct.pack("<Q", 40) + b"{not json" + b" " * 31 + data[48:])
    assert_clean_failure(run("export", src, tmp_path / "o", "--drop-attn", "1"), "corrupt safetensors", tmp_path / "o")
    shard.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    assert_clean_failure(run("export", src, tmp_path / "o", "--drop-attn", "1"), "corrupt safetensors", tmp_path / "o")


def test_bin_only_is_refused_without_unpickling(src, tmp_path):
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"this would be a pickle; it must never be opened")
    proc = run("export", src, tmp_path / "o", "--drop-attn", "1")
    assert_clean_failure(proc, "only pickle", tmp_path / "o")
    assert "safe_serialization=True" in proc.stderr


def test_disk_full(src, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    monkeypatch.setattr(os, "pwrite", full)
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "o"), "--drop-attn", "1"])
    assert res.exit_code == 1 and res.exception.__class__ is SystemExit
    assert "error: disk full" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.skipprune-*"))


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # every repo is missing
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args):
        pass


def test_hub_not_found_and_no_network(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
    try:
        proc = run(
            "export",
            "nobody/nothing",
            tmp_path / "o",
            "--drop-attn",
            "1",
            env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"},
        )
        assert_clean_failure(proc, "Hub model nobody/nothing not found", tmp_path / "o")
    finally:
        server.shutdown()
    proc = run(
        "export", "nobody/nothing", tmp_path / "o", "--drop-attn", "1", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert_clean_failure(proc, "could not reach the Hub", tmp_path / "o")
    proc = run("export", "nobody/nothing", tmp_path / "o", "--drop-attn", "1", env={**env, "HF_HUB_OFFLINE": "1"})
    assert_clean_failure(proc, "could not reach the Hub", tmp_path / "o")


def test_other_commands_on_broken_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run("eval", tmp_path / "empty", "--no-speed"), "no config.json")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "skipprune.json").write_text("{broken")
    assert_clean_failure(run("card", tmp_path / "export"), "skipprune.json: unreadable")
    (tmp_path / "empty" / "config.json").write_text("[1, 2]")
    assert_clean_failure(run("eval", tmp_path / "empty", "--no-speed"), "not a JSON object")


def test_an_output_name_that_is_not_utf8(src, tmp_path):
    out = Path(os.fsdecode(bytes(tmp_path) + b"/bad\xff"))
    assert_clean_failure(run("export", src, out, "--drop-attn", "1"), "is not valid UTF-8", out)


def test_a_tokenizer_with_ids_beyond_the_embeddings(src, tmp_path):
    """A tokenizer that is not the model's (ids past its embedding table) is named, not an IndexError."""
    from tiny import make_byte_fallback_tokenizer

    make_byte_fallback_tokenizer(src, "the quick brown fox jumps over the lazy dog\n" * 50)  # 259+ ids, 128 rows
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    for command in ("analyze", "sweep"):
        proc = run(command, src, "--text", text, "--samples", "2", "--seq-len", "16")
        assert_clean_failure(proc, "embeddings: the tokenizer files beside its config.json are not this model's")
