"""The training itself: what trains (LoRA adapters, whole blocks, or `--train last:K,head`), the loop on this
process's share of every global batch, and the trained student made whole again (adapters merged, FSDP2's
shards gathered) for the output."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass

from ..errors import MeasureError, PlanError
from ..measure.stream import blocks_of
from . import distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """What `--train` trains: the last `last` kept blocks, and the LM head when `head`."""

    last: int = 0
    head: bool = False

    def __str__(self) -> str:
        return ",".join([f"last:{self.last}"] * bool(self.last) + ["head"] * self.head)


def parse_train(spec: str | None) -> Recipe | None:
    if spec is None:
        return None
    last, head = 0, False
    for part in (p.strip() for p in spec.split(",")):
        if part == "head":
            head = True
        elif part.startswith("last:") and part[5:].isdigit() and int(part[5:]) > 0:
            last = int(part[5:])
        else:
            raise PlanError(f"--train {spec!r}: {part!r} is neither last:K (K >= 1) nor head; e.g. --train last:3,head")
    return Recipe(last, head)


@dataclass
class Run:
    """Where the training runs: the processes, how the student is spread over them, the device of this one, and
    the student's decoder blocks (FSDP2's units)."""

    world: distributed.World
    strategy: str
    device: object
    blocks: list = dataclasses.field(default_factory=list)


def peft_module():
    try:
        import peft
    except ImportError:
        raise MeasureError("healing with LoRA needs peft: pip install 'skipprune[heal]' (or use --full)") from None
    return peft


def learning_rate(lr: float | None, lora_rank: int | None) -> float:
    return lr if lr is not None else (2e-4 if lora_rank else 2e-5)


def trainable(model, lora_rank, recipe, frozen):
    """The student with what trains set trainable: LoRA adapters (peft) or whole weights. Returns it, the names
    of the tensors it trains (no copy of the weights is kept: the structure check compares every other tensor
    with the pruned export), and the LoRA config (None without LoRA)."""
    if not lora_rank:
        chosen = _chosen(model, list(blocks_of(model)), recipe)
        for name, p in model.named_parameters():
            p.requires_grad = id(p) in chosen and not name.startswith(frozen)
        return model, {name for name, p in model.named_parameters() if p.requires_grad}, None
    peft = peft_module()
    with warnings.catch_warnings():  # peft asks transformers about a renamed attribute: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        exclude = [p.rstrip(".") + "." + proj for p in frozen for proj in ("gate_proj", "up_proj", "down_proj")]
        config = peft.LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", exclude_modules=exclude or None
        )
        model = peft.get_peft_model(model, config)
    prefix = "base_model.model."
    trained = {name.removeprefix(prefix) + ".weight" for name, m in model.named_modules() if hasattr(m, "base_layer")}
    return model, trained, config


def train_loop(model, teacher, windows, steps, batch, lora_rank, lr, score, eval_every, curve, run: Run) -> None:
    """The training loop, on this process's share of every global batch."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    world = run.world
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate(lr, lora_rank), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(0)
    seq_len = windows.shape[1]
    # each process's loss: a sum over its tokens over the global count, times N (DDP and FSDP2 average gradients)
    scale = world.size / batch
    model.train()
    start = time.monotonic()
    with tqdm(total=steps, desc="healing", unit="step", disable=None if world.main else True, leave=False) as bar:
        for step in range(1, steps + 1):
            t0 = time.monotonic()
            ids = world.share(windows[torch.randint(0, len(windows), (batch,), generator=gen)]).to(run.device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            if teacher is None:
                labels = ids[:, 1:].reshape(-1).to(logits.device)  # a device map may end on another GPU
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels, reduction="sum")
                loss = nll * scale / (seq_len - 1)
            else:
                with torch.no_grad():
                    target = teacher(input_ids=ids, use_cache=False).logits.float().to(logits.device)
                kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True, reduction="sum")
                loss = kl * scale / seq_len
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            # the main process's share, scaled to the whole batch: the global loss up to sampling noise
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{batch * seq_len / (time.monotonic() - t0):.0f}")
            bar.update(1)
            if bar.disable and world.main and (step % max(1, steps // 10) == 0 or step == steps):
                spent = time.monotonic() - start
                log.info(
                    "healing: step %d of %d, loss %.4f, %.0f s so far, about %.0f s left",
                    step, steps, loss.item(), spent, spent / step * (steps - step),
                )  # fmt: skip
            if eval_every and step % eval_every == 0 and step < steps:
                model.eval()
                ppl = score(model)
                curve.append((step * batch * seq_len, ppl))
                model.train()
    if world.main:
        log.info(
            "healed: %d step%s in %.0f s, last loss %.4f",
            steps, "s" * (steps > 1), time.monotonic() - start, loss.item(),
        )  # fmt: skip
    model.eval()


def merged(model, run: Run, adapters, rebuild):
    """The trained student, whole and with its adapters merged, on the main process (None on the others). FSDP2's
    shards are gathered into a fresh copy there: peft cannot merge sharded adapters."""
    if run.strategy == "fsdp2":
        state = distributed.gathered_state(model, run.world)
        if not run.world.main:
            return None
        model = rebuild()
        if adapters is not None:
            model = peft_module().get_peft_model(model, adapters)
        model.load_state_dict(state)
    elif not run.world.main:
        return None
    model = distributed.unwrap(model)
    if adapters is not None:
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad = False
    return model.eval()


def _chosen(model, blocks: list, recipe: Recipe | None) -> set[int]:
    """The parameters a whole-weight recipe trains (by identity: a tied head is the embedding): every decoder
    block's (`--full`), or the last K blocks' and the LM head's (`--train`)."""
    if recipe is None:
        return {id(p) for b in blocks for p in b.parameters()}
    if recipe.last > len(blocks):
        raise PlanError(f"--train last:{recipe.last}: the export has {len(blocks)} blocks; choose K <= {len(blocks)}")
    chosen = {id(p) for b in blocks[len(blocks) - recipe.last :] for p in b.parameters()}
    if recipe.head:
        chosen |= {id(p) for p in model.get_output_embeddings().parameters()}
    return chosen
