"""heal(): train a pruned export briefly to recover what removal cost, and write it as a new export folder.

Two objectives: `distill` (KL divergence from the source model's next-token distribution, the teacher; as
in Minitron and Puzzle) and `lm` (next-token loss on the text, as in SLEB and Shortened LLaMA). Three
recipes: LoRA adapters through peft (rank r, alpha 2r) on every linear layer of the kept blocks, merged into
the weights at the end; `full`: every weight of the decoder blocks; `train="last:K,head"`: the LM head and the
last K kept blocks, fully (what "Reassessing Layer Pruning", 2026, found better than LoRA after removing the
last layers). The output has the export's tensor names, shapes, dtypes, shards and per-layer flags: it loads
exactly as before. Scores are measured on a held-out text that is never the healing text. Under a launcher
(torchrun, accelerate launch) the same healing runs on N processes (distributed.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import formats
from ..errors import MeasureError, PlanError
from ..export.source import index_tensors
from ..export.staging import check_output, check_output_parent, publish, staging
from ..export.verify import verify_structure
from ..export.writer import INDEX_NAME, OutTensor
from ..measure.perplexity import perplexity
from ..measure.runner import input_device, load_model, pick_device, prepare, prepare_stock
from ..measure.stream import blocks_of
from ..measure.text import overlap, read_text, token_windows
from ..records import RESULTS_FILE, ExportRecord, Healing, Verification
from ..system import placement_options
from . import distributed
from .training import Run, learning_rate, merged, parse_train, peft_module, train_loop, trainable

log = logging.getLogger(__name__)
METHODS = ("distill", "lm")


@dataclass
class HealResult:
    output: Path
    record: ExportRecord
    curve: list[tuple[int, float]]  # (healing tokens so far, held-out perplexity)


def heal(
    pruned: str | os.PathLike,
    output: str | os.PathLike,
    *,
    text: str,
    teacher: str | None = None,
    method: str = "distill",
    steps: int | None = None,
    tokens: int | None = None,
    lora_rank: int | None = 8,
    train: str | None = None,
    parallel: str = "auto",
    lr: float | None = None,
    seq_len: int = 128,
    batch: int = 8,
    score_text: str = "bundled",
    score_windows: int = 64,
    eval_every: int | None = None,
    seed: int = 0,
    device: str = "auto",
    device_map: str | None = None,
    max_memory: str | dict | None = None,
    overwrite: bool = False,
) -> HealResult | None:
    """Heal the export at `pruned` on `text` and write the result to `output` (see the module docs).

    `lora_rank=None` trains the decoder blocks' weights fully; `train="last:K,head"` (with `lora_rank=None`)
    the LM head and the last K kept blocks. Give `steps` or `tokens` (default: 200 steps); `batch` is the
    global batch, shared among the processes of a distributed run (`parallel`: ddp, fsdp2, or auto).
    `teacher` is the model the export was pruned from (default: its Hub source, when it has one). With a
    `device_map` (accelerate: auto, balanced, ...) student and teacher are spread over the GPUs (and CPU
    memory) in their checkpoint dtype; training needs them in memory, not offloaded to disk. In a distributed
    run, the main process writes the output and returns the result; the others return None."""
    if method not in METHODS:
        raise PlanError(f"unknown healing method {method!r}: use distill or lm")
    if steps is not None and tokens is not None:
        raise PlanError("give --steps or --tokens, not both")
    if min(v for v in (steps, tokens, 0) if v is not None) < 0 or seq_len < 2 or batch < 1:
        raise PlanError("--steps, --tokens, --seq-len and --batch must be positive")
    if device_map == "stream":
        raise PlanError("--device-map stream runs one block at a time and cannot train; use --device-map auto")
    if train is not None and lora_rank is not None:
        raise PlanError("--train trains whole weights: it goes without LoRA (drop --lora-rank)")
    recipe = parse_train(train)
    if distributed.launched() and device_map:
        raise PlanError(
            "under torchrun or accelerate launch every process holds the student itself: drop --device-map "
            "(--parallel fsdp2 shards a student that does not fit one device)"
        )
    if distributed.launched() and batch < int(os.environ["WORLD_SIZE"]):
        raise PlanError(f"--batch {batch} cannot be shared among {os.environ['WORLD_SIZE']} processes: raise --batch")
    folder = Path(pruned)
    record = ExportRecord.load(folder)
    out = Path(output).expanduser().absolute()
    check_output_parent(out)
    check_output(out, folder.resolve(), overwrite)
    if text == "bundled":
        raise MeasureError(
            "the bundled text is the held-out split skipprune scores on: heal on another text (--text FILE)"
        )
    if lora_rank and steps != 0 and tokens != 0:
        peft_module()  # before minutes of loading
    train, train_name = read_text(text, choices="a UTF-8 text file or 'wikitext2'")
    held_out, score_name = read_text(score_text)
    if overlap(held_out, train) > 0.05:
        raise MeasureError(
            f"the scoring text ({score_name}) overlaps the healing text ({train_name}): scores would be on training "
            "data; pass another --score-text"
        )
    if method == "distill":
        teacher = teacher or (f"{record.source.id}" if record.source.on_hub else None)
        if teacher is None:
            raise PlanError(
                f"--method distill needs the model {folder.name} was pruned from ({record.source.label}): "
                "pass --teacher SOURCE, or --method lm"
            )
    steps = steps if steps is not None else (math.ceil(tokens / (batch * seq_len)) if tokens is not None else 200)

    device_map, max_memory = placement_options(device_map, max_memory)
    device = pick_device(device)
    world = distributed.join(device)
    try:
        return _heal_joined(
            folder, out, record, world, device, device_map, max_memory, parallel, train, train_name, held_out,
            score_name, teacher, method, steps, lora_rank, recipe, lr, seq_len, batch, text, score_text,
            score_windows, eval_every, seed, overwrite,
        )  # fmt: skip
    finally:
        distributed.leave(world)


def _heal_joined(
    folder, out, record, world, device, device_map, max_memory, parallel, train, train_name, held_out, score_name,
    teacher, method, steps, lora_rank, recipe, lr, seq_len, batch, text, score_text, score_windows, eval_every,
    seed, overwrite,
):  # fmt: skip
    import torch

    strategy = distributed.pick_strategy(parallel, world, _folder_bytes(folder), device)
    if world.main and world.size > 1:
        log.info("healing on %d processes (%s)", world.size, strategy)
    place = device if world.size == 1 or device != "cuda" else f"cuda:{world.local_rank}"
    # FSDP2 shards from a CPU copy (in the checkpoint dtype when it is bound for GPUs): no device holds it whole
    place = "cpu" if strategy == "fsdp2" else place
    gpu = keep = strategy == "fsdp2" and device == "cuda"  # FSDP2 then moves each shard to this process's GPU
    student = prepare(str(folder), device, spread=device_map is not None, streamable=False)
    model = load_model(student, place, device_map, max_memory, keep_dtype=keep)
    here = torch.device(f"cuda:{world.local_rank}") if gpu else input_device(model)
    run = Run(world, strategy, here, list(blocks_of(model)))  # found before peft wraps the model
    windows = token_windows(student.tokenizer, train, seq_len, vocab_size=student.vocab_size)
    scoring = token_windows(student.tokenizer, held_out, seq_len, score_windows, vocab_size=student.vocab_size)
    reference, teacher_label = None, None
    if teacher is not None:
        teacher_ref, _ = prepare_stock(teacher, device, spread=device_map is not None, streamable=False)
        teacher_label = teacher_ref.label  # a Hub id or a folder's name: records never hold a local path
        if method == "distill" or world.main or strategy == "fsdp2":
            reference = load_model(teacher_ref, place, device_map, max_memory, keep_dtype=keep)

    torch.manual_seed(seed)  # the same adapters on every process
    frozen = formats.of_export(record.architecture).frozen(record)
    model, trained, adapters = trainable(model, lora_rank, recipe, frozen) if steps else (model, set(), None)
    model = distributed.wrap(model, strategy, run.blocks, str(run.device)) if steps else model
    if reference is not None and strategy == "fsdp2":
        reference = distributed.wrap(reference, strategy, blocks_of(reference), str(run.device), trainable=False)

    def score(m) -> float | None:
        """Held-out perplexity, on the main process (with FSDP2, whose forward gathers weights from every
        process, on all of them)."""
        if world.main or strategy == "fsdp2":
            return perplexity(distributed.unwrap(m), scoring, score_name)[0]
        return None

    scores = {"pruned": score(model)}  # LoRA's B starts at zero: the adapters change nothing yet
    if reference is not None:
        scores["source"] = score(reference)
        if method == "lm":
            reference = None
    start = time.monotonic()
    curve = [(0, scores["pruned"])]
    if steps:
        train_loop(model, reference, windows, steps, batch, lora_rank, lr, score, eval_every, curve, run)
        scores["healed"] = score(model)
        rebuild = lambda: load_model(student, "cpu", keep_dtype=keep)  # noqa: E731
        model = merged(model, run, adapters, rebuild)
    seconds = time.monotonic() - start
    if not world.main:
        world.barrier()  # until the main process has written the output
        return None
    scores.setdefault("healed", scores["pruned"])
    if curve[-1][0] != steps * batch * seq_len:
        curve.append((steps * batch * seq_len, scores["healed"]))

    healing = Healing(
        method=method,
        text=train_name,
        tokens=steps * batch * seq_len,
        steps=steps,
        lr=learning_rate(lr, lora_rank),
        lora_rank=lora_rank,
        seed=seed,
        seconds=round(seconds, 1),
        teacher=teacher_label if method == "distill" else None,
        score_text=score_name,
        perplexity={k: round(v, 4) for k, v in scores.items()},
        tensors_trained=len(trained),
        score_seq_len=seq_len,
        command=_command(
            folder.name,
            out.name,
            text,
            teacher_label if method == "distill" else None,
            method,
            steps,
            lora_rank,
            recipe,
            lr,
            seq_len,
            batch,
            score_text,
            seed,
        ),
        train=str(recipe) if recipe else None,
        processes=world.size,
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    try:
        return HealResult(out, _write(folder, out, record, healing, state, trained, overwrite), curve)
    finally:
        world.barrier()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _command(pruned, out, text, teacher, method, steps, lora_rank, recipe, lr, seq_len, batch, score_text, seed):
    """The heal command that reproduces this one, naming texts and folders by name, never by path (on any number
    of processes: the global batch is the same)."""
    parts = ["skipprune", "heal", pruned, out, "--text", Path(text).name if text != "wikitext2" else text]
    parts += ["--method", method, "--steps", str(steps)] + (["--teacher", teacher] if teacher else [])
    recipe_flags = ["--train", str(recipe)] if recipe else ["--full"]
    parts += recipe_flags if lora_rank is None else ["--lora-rank", str(lora_rank)]
    options = (("--lr", lr, None), ("--seq-len", seq_len, 128), ("--batch", batch, 8), ("--seed", seed, 0))
    for flag, value, default in options:
        if value != default:
            parts += [flag, str(value)]
    if score_text != "bundled":
        parts += ["--score-text", Path(score_text).name if score_text != "wikitext2" else score_text]
    return shlex.join(parts)


def _write(
    folder: Path, out: Path, record: ExportRecord, healing: Healing, state: dict, trained: set, overwrite: bool
) -> ExportRecord:
    """The healed folder: the export's files as they are, its shards rewritten with the healed weights (same
    names, shapes, dtypes and shard layout), its records saying what was done; published atomically."""
    import torch
    from safetensors.torch import save_file

    from ..cards.card import write_card

    written = index_tensors(folder)
    with staging(out, overwrite) as tmp:
        for item in folder.iterdir():
            if item.is_file() and item.suffix != ".safetensors" and item.name not in (INDEX_NAME, RESULTS_FILE):
                shutil.copyfile(item, tmp / item.name)
        if (folder / INDEX_NAME).is_file():
            shutil.copyfile(folder / INDEX_NAME, tmp / INDEX_NAME)
        dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
        for shard in sorted({info.file.name for info in written.values()}):
            tensors = {
                name: state[name].to(dtypes.get(info.dtype, state[name].dtype)).contiguous()
                for name, info in written.items()
                if info.file.name == shard
            }
            save_file(tensors, tmp / shard, metadata={"format": "pt"})
        # every tensor as before in name, shape and dtype; the ones healing did not train, byte for byte
        expected = [OutTensor(name, info, info.dtype) for name, info in written.items()]
        structure = verify_structure(tmp, expected, changed=frozenset(trained))
        structure.model_expects_them = record.verification.structure.model_expects_them
        verification = Verification(
            structure,
            numerics_skipped="healed: its weights were trained, so its logits differ from the bypassed source's",
        )
        healed = dataclasses.replace(record, healing=healing, verification=verification)
        healed.save(tmp, flush=False)  # (publish flushes the whole folder)
        write_card(tmp, healed, None, name=out.name, flush=False)
        publish(tmp, out, overwrite)
    return healed


__all__ = ["HealResult", "heal"]
