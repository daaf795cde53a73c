"""skipprune heal on 2 processes (torchrun, gloo on the CPU): the same weights as 1 process with the same global
batch, for LoRA, --train and the distillation teacher, with data parallel (DDP) and with FSDP2's sharding;
the output verifies and loads as before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import skipprune
from skipprune.data import DEMO_MODEL, HELDOUT
from skipprune.records import ExportRecord

from common import run, tensors

# Training runs in fp32 on the CPU; a process computes its share of each batch, so its matmuls round differently
# from one process's (other shapes), by about 1e-7 relative. The export stores bf16: such a difference flips the
# rounding of a few weights to the neighbouring bf16 value (one unit in the last place, 2^-7 relative at most).
# A weight near zero is a near-cancelling sum, whose fp32 rounding is large beside it but not beside the tensor's
# scale. So: every weight within one bf16 unit or 1e-5 of its tensor's largest weight (the training changed the
# weights by about 1e-3), and fewer than 1 in 10,000 not bit-equal.
ONE_BF16_UNIT, NOISE = 2**-7, 1e-5
# 5 windows a step: the processes get 3 and 2, so a loss averaged per process (not over the global token count)
# would weigh the windows unequally and show here (a constant factor would not: AdamW is scale-invariant)
HEAL = ["--steps", "3", "--seq-len", "32", "--batch", "5", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    skipprune.export(DEMO_MODEL, root / "pruned", drop_attn="last:2", drop_blocks="9")
    text = root / "train.txt"
    lines = HELDOUT.read_text(encoding="utf-8").splitlines()[:600]
    text.write_text("\n".join(" ".join(reversed(line.split())) for line in lines))  # not the scoring text
    return root / "pruned", text


def torchrun(*args, processes: int = 2):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd += ["-m", "skipprune", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def assert_same_tensors(one, two, pruned_folder):
    a, b, before = tensors(one), tensors(two), tensors(pruned_folder)
    assert a.keys() == b.keys() == before.keys()
    changed = [k for k in a if not torch.equal(a[k], before[k])]
    assert changed, "healing changed nothing: the comparison would prove nothing"
    differ = total = 0
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.bfloat16
        scale = float(a[k].float().abs().max())
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=ONE_BF16_UNIT, atol=NOISE * scale, msg=k)
        differ, total = differ + int((a[k] != b[k]).sum()), total + a[k].numel()
        if k not in changed:
            assert torch.equal(b[k], before[k]), k  # untrained tensors stay byte for byte
    assert differ < total / 10_000, (differ, total)


@pytest.mark.parametrize(
    "recipe, parallel",
    [(["--lora-rank", "4"], "ddp"), (["--train", "last:2,head"], "ddp"), (["--lora-rank", "4"], "fsdp2")],
    ids=["lora-ddp", "train-ddp", "lora-fsdp2"],
)
def test_two_processes_equal_one(pruned, tmp_path, recipe, parallel):
    folder, text = pruned
    options = ["--text", text, "--method", "lm", *HEAL, *recipe]
    single = run("heal", folder, tmp_path / "one", *options)
    assert single.returncode == 0, single.stderr
    double = torchrun("heal", folder, tmp_path / "two", *options, "--parallel", parallel)
    assert double.returncode == 0, double.stderr[-3000:]
    assert f"healing on 2 processes ({parallel})" in double.stderr
    assert double.stdout.count("held-out perplexity") == 1  # the main process reports, once
    assert_same_tensors(tmp_path / "one", tmp_path / "two", folder)
    record = ExportRecord.load(tmp_path / "two")
    command = ExportRecord.load(tmp_path / "one").healing.command
    assert record.healing.processes == 2 and record.healing.command == command.replace(" one ", " two ")
    structure = record.verification.structure  # checked as the main process wrote it
    assert structure.model_expects_them and structure.tensors == len(tensors(folder))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two", trust_remote_code=True) is not None
    assert not list(tmp_path.glob(".two.skipprune-*"))


def test_distillation_with_a_sharded_teacher(pruned, tmp_path):
    """--method distill with FSDP2: the teacher sharded like the student, run without gradients on every rank."""
    folder, text = pruned
    options = ["--text", text, "--method", "distill", "--teacher", DEMO_MODEL, *HEAL, "--train", "last:1"]
    single = run("heal", folder, tmp_path / "one", *options)
    assert single.returncode == 0, single.stderr
    double = torchrun("heal", folder, tmp_path / "two", *options, "--parallel", "fsdp2")
    assert double.returncode == 0, double.stderr[-3000:]
    assert_same_tensors(tmp_path / "one", tmp_path / "two", folder)
    card = (tmp_path / "two" / "README.md").read_text()
    assert "full fine-tuning of the last 1 kept block, on 2 processes" in card


def test_a_batch_smaller_than_the_processes_is_refused(pruned, tmp_path):
    folder, text = pruned
    proc = torchrun("heal", folder, tmp_path / "two", "--text", text, "--method", "lm", "--batch", "1", "--steps", "1")
    assert proc.returncode != 0
    # each process says it in one line (torchrun then adds its own report of the failed processes)
    assert proc.stderr.count("error: --batch 1 cannot be shared among 2 processes: raise --batch") == 2
    assert "skipprune/heal" not in proc.stderr and not (tmp_path / "two").exists()


def test_train_recipe_trains_only_the_head_and_last_blocks(pruned, tmp_path):
    folder, text = pruned
    proc = run("heal", folder, tmp_path / "h", "--text", text, "--method", "lm", *HEAL, "--train", "last:1,head")
    assert proc.returncode == 0, proc.stderr
    before, after = tensors(folder), tensors(tmp_path / "h")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    last = max(int(k.split(".")[2]) for k in before if k.startswith("model.layers."))  # output numbering
    # the demo model ties its head to the embeddings: training the head trains that matrix
    assert changed == {k for k in before if k.startswith(f"model.layers.{last}.")} | {"model.embed_tokens.weight"}
    card = (tmp_path / "h" / "README.md").read_text()
    assert "full fine-tuning of the last 1 kept block and the LM head" in card
    assert "--train last:1,head" in card
    for bad, message in (
        (["--train", "first:2"], "'first:2' is neither last:K (K >= 1) nor head"),
        (["--train", "last:99"], "--train last:99: the export has"),
        (["--train", "head", "--full"], "--train and --full choose what is trained: give one"),
        (["--train", "head", "--lora-rank", "4"], "--train trains whole weights without LoRA: drop --lora-rank"),
    ):
        proc = run("heal", folder, tmp_path / "bad", "--text", text, "--method", "lm", "--steps", "1", *bad)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()
