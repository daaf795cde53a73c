"""heal(): train a pruned export briefly to recover what removal cost, and write it as a new export folder.

Two objectives: `distill` (KL divergence from the source model's next-token distribution, the teacher; as
in Minitron and Puzzle) and `lm` (next-token loss on the text, as in SLEB and Shortened LLaMA). LoRA
adapters through peft (rank r, alpha 2r) on every linear layer of the kept blocks, merged into the weights
at the end; or `full`: every weight of the decoder blocks trained. Embeddings and the LM head stay as they
are. The output has the export's tensor names, shapes, dtypes, shards and per-layer flags: it loads exactly
as before. Scores are measured on a held-out text that is never the healing text.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import MeasureError, PlanError
from ..export import pipeline
from ..export.source import index_tensors
from ..export.verify import verify_structure
from ..export.writer import INDEX_NAME, OutTensor
from ..measure.perplexity import perplexity
from ..measure.runner import input_device, load_model, pick_device, prepare, prepare_stock
from ..measure.text import overlap, read_text, token_windows
from ..records import RESULTS_FILE, ExportRecord, Healing, Verification
from ..system import placement_options

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
) -> HealResult:
    """Heal the export at `pruned` on `text` and write the result to `output` (see the module docs).

    `lora_rank=None` trains the decoder blocks' weights fully. Give `steps` or `tokens` (default: 200 steps).
    `teacher` is the model the export was pruned from (default: its Hub source, when it has one). With a
    `device_map` (accelerate: auto, balanced, ...) student and teacher are spread over the GPUs (and CPU
    memory) in their checkpoint dtype; training needs them in memory, not offloaded to disk."""
    import torch

    if method not in METHODS:
        raise PlanError(f"unknown healing method {method!r}: use distill or lm")
    if steps is not None and tokens is not None:
        raise PlanError("give --steps or --tokens, not both")
    if min(v for v in (steps, tokens, 0) if v is not None) < 0 or seq_len < 2 or batch < 1:
        raise PlanError("--steps, --tokens, --seq-len and --batch must be positive")
    if device_map == "stream":
        raise PlanError("--device-map stream runs one block at a time and cannot train; use --device-map auto")
    folder = Path(pruned)
    record = ExportRecord.load(folder)
    out = Path(output).expanduser().absolute()
    pipeline._check_output_parent(out)
    pipeline._check_output(out, folder.resolve(), overwrite)
    if text == "bundled":
        raise MeasureError(
            "the bundled text is the held-out split skipprune scores on: heal on another text (--text FILE)"
        )
    if lora_rank and steps != 0 and tokens != 0:
        _peft()  # before minutes of loading
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
    student = prepare(str(folder), device, spread=device_map is not None, streamable=False)
    model = load_model(student, device, device_map, max_memory)
    windows = token_windows(student.tokenizer, train, seq_len)
    scoring = token_windows(student.tokenizer, held_out, seq_len, score_windows)
    scores = {"pruned": perplexity(model, scoring, score_name)[0]}
    reference, teacher_label = None, None
    if teacher is not None:
        teacher_ref, _ = prepare_stock(teacher, device, spread=device_map is not None, streamable=False)
        teacher_label = teacher_ref.label  # a Hub id or a folder's name: records never hold a local path
        reference = load_model(teacher_ref, device, device_map, max_memory)
        scores["source"] = perplexity(reference, scoring, score_name)[0]
        if method == "lm":
            reference = None

    torch.manual_seed(seed)
    start = time.monotonic()
    curve = [(0, scores["pruned"])]
    trained = set()
    # the serving format's all-zero FFNs stay zero: their being zero is what makes every engine agree
    frozen = tuple(f"model.layers.{i}.mlp." for i in record.zero_ffn_layers)
    if steps:
        model, trained = _train(
            model, reference, windows, steps, batch, lora_rank, lr, scoring, score_name, eval_every, curve, frozen
        )
    seconds = time.monotonic() - start
    scores["healed"] = perplexity(model, scoring, score_name)[0] if steps else scores["pruned"]
    if curve[-1][0] != steps * batch * seq_len:
        curve.append((steps * batch * seq_len, scores["healed"]))

    healing = Healing(
        method=method,
        text=train_name,
        tokens=steps * batch * seq_len,
        steps=steps,
        lr=_lr(lr, lora_rank),
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
            lr,
            seq_len,
            batch,
            score_text,
            seed,
        ),
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return HealResult(out, _write(folder, out, record, healing, state, trained, overwrite), curve)


def _command(pruned, out, text, teacher, method, steps, lora_rank, lr, seq_len, batch, score_text, seed):
    """The heal command that reproduces this one, naming texts and folders by name, never by path."""
    parts = ["skipprune", "heal", pruned, out, "--text", Path(text).name if text != "wikitext2" else text]
    parts += ["--method", method, "--steps", str(steps)] + (["--teacher", teacher] if teacher else [])
    parts += ["--full"] if lora_rank is None else ["--lora-rank", str(lora_rank)]
    options = (("--lr", lr, None), ("--seq-len", seq_len, 128), ("--batch", batch, 8), ("--seed", seed, 0))
    for flag, value, default in options:
        if value != default:
            parts += [flag, str(value)]
    if score_text != "bundled":
        parts += ["--score-text", Path(score_text).name if score_text != "wikitext2" else score_text]
    return shlex.join(parts)


def _peft():
    try:
        import peft
    except ImportError:
        raise MeasureError("healing with LoRA needs peft: pip install 'skipprune[heal]' (or use --full)") from None
    return peft


def _lr(lr: float | None, lora_rank: int | None) -> float:
    return lr if lr is not None else (2e-4 if lora_rank else 2e-5)


def _train(model, teacher, windows, steps, batch, lora_rank, lr, scoring, score_name, eval_every, curve, frozen=()):
    """The training loop; returns the model with its adapters merged, and the names of the tensors it trained
    (no copy of the weights is kept: the structure check compares every other tensor with the pruned export)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if lora_rank:
        peft = _peft()
        with warnings.catch_warnings():  # peft asks transformers about a renamed attribute: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            exclude = [p.rstrip(".") + "." + proj for p in frozen for proj in ("gate_proj", "up_proj", "down_proj")]
            config = peft.LoraConfig(
                r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", exclude_modules=exclude or None
            )
            model = peft.get_peft_model(model, config)
        prefix = "base_model.model."
        trained = {
            name.removeprefix(prefix) + ".weight" for name, m in model.named_modules() if hasattr(m, "base_layer")
        }
    else:
        for name, p in model.named_parameters():  # the decoder blocks only
            p.requires_grad = (".layers." in name or ".h." in name) and not name.startswith(frozen)
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=_lr(lr, lora_rank), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(0)
    seq_len = windows.shape[1]
    model.train()
    start = time.monotonic()
    with tqdm(total=steps, desc="healing", unit="step", disable=None, leave=False) as bar:
        for step in range(1, steps + 1):
            t0 = time.monotonic()
            ids = windows[torch.randint(0, len(windows), (batch,), generator=gen)].to(input_device(model))
            logits = model(input_ids=ids, use_cache=False).logits.float()
            if teacher is None:
                labels = ids[:, 1:].to(logits.device)
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))
            else:
                with torch.no_grad():
                    target = teacher(input_ids=ids.to(input_device(teacher)), use_cache=False).logits.float()
                target = target.to(logits.device)
                loss = (
                    F.kl_div(
                        F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean"
                    )
                    / seq_len
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{batch * seq_len / (time.monotonic() - t0):.0f}")
            bar.update(1)
            if bar.disable and (step % max(1, steps // 10) == 0 or step == steps):  # no bar: a line per tenth
                spent = time.monotonic() - start
                log.info(
                    "healing: step %d of %d, loss %.4f, %.0f s so far, about %.0f s left",
                    step, steps, loss.item(), spent, spent / step * (steps - step),
                )  # fmt: skip
            if eval_every and step % eval_every == 0 and step < steps:
                model.eval()
                curve.append((step * batch * seq_len, perplexity(model, scoring, score_name)[0]))
                model.train()
    log.info(
        "healed: %d step%s in %.0f s, last loss %.4f", steps, "s" * (steps > 1), time.monotonic() - start, loss.item()
    )
    model.eval()
    if lora_rank:
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad = False
    return model, trained


def _write(
    folder: Path, out: Path, record: ExportRecord, healing: Healing, state: dict, trained: set, overwrite: bool
) -> ExportRecord:
    """The healed folder: the export's files as they are, its shards rewritten with the healed weights (same
    names, shapes, dtypes and shard layout), its records saying what was done; published atomically."""
    import torch
    from safetensors.torch import save_file

    from ..cards.card import write_card

    written = index_tensors(folder)
    with pipeline.staging(out, overwrite) as tmp:
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
        healed.save(tmp)
        write_card(tmp, healed, None, name=out.name)
        pipeline.publish(tmp, out, overwrite)
    return healed


__all__ = ["HealResult", "heal"]
