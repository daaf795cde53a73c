"""The installed command on the success path: shards, index, dtype, overwrite, provenance, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.export.source import index_tensors

from common import EXE, digest, run


def test_sharded_export_with_index_and_provenance(family_sources, tmp_path):
    src = family_sources["gemma2"]
    before = digest(src)
    out = tmp_path / "out"
    proc = run("export", src, out, "--drop-attn", "last:50%", "--keep-last-layer", "--max-shard-size", "20KB")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "logits verified" in proc.stderr and "structure verified" in proc.stderr
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in index_tensors(out).values())
    record = json.loads((out / "skipprune.json").read_text())
    assert record["plan"]["drop_attention"] == [2, 3, 4] and record["plan"]["drop_blocks"] == []
    assert record["verification"]["numerics"]["max_abs_logit_diff"] == 0.0
    assert record["command"].startswith("skipprune export") and "--keep-last-layer" in record["command"]
    config = json.loads((out / "config.json").read_text())
    assert config["layer_has_attention"] == [True, True, False, False, False, True]
    assert config["source_layer_index"] == list(range(6))
    assert (out / "README.md").read_text().count("**removed**") == 3
    assert digest(src) == before
    assert AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True) is not None


def test_dtype_conversion_and_overwrite(family_sources, tmp_path):
    src, out = family_sources["olmo2"], tmp_path / "out"
    skipprune.export(src, out, drop_mlp="0,5")
    first = (out / "model.safetensors").read_bytes()
    skipprune.export(src, out, drop_mlp="0,5", dtype="bfloat16", overwrite=True)
    assert (out / "model.safetensors").read_bytes() != first
    with safe_open(src / "model.safetensors", "pt") as s, safe_open(out / "model.safetensors", "pt") as o:
        a, b = s.get_tensor("model.embed_tokens.weight"), o.get_tensor("model.embed_tokens.weight")
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert model.dtype == torch.bfloat16
    assert not list(tmp_path.glob(".out.skipprune-*"))


def test_kill_9_never_leaves_a_complete_looking_output(family_sources, tmp_path):
    """Kill the export at many moments: OUTPUT is either absent or complete; a rerun cleans up."""
    src, out = family_sources["qwen2"], tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outcomes = set()
    for delay in (0.3, 0.8, 1.4, 2.0, 2.6, 3.2, 4.0, 5.0):
        proc = subprocess.Popen(
            [EXE, "export", src, out, "--drop-attn", "1-3", "--overwrite"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            outcomes.add("complete")
            record = json.loads((out / "skipprune.json").read_text())
            assert record["verification"]["structure"]["tensors"] == len(index_tensors(out))
            assert AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True) is not None
            assert len(list(out.iterdir())) == 8
            shutil.rmtree(out)
        else:
            outcomes.add("absent")
    assert "absent" in outcomes  # at least one kill landed mid-export
    assert run("export", src, out, "--drop-attn", "1-3").returncode == 0
    assert not list(tmp_path.glob(".out.skipprune-*"))  # stale partial folders of killed runs are gone
