"""evaluate(): load a model (and optionally its baseline), measure both in one run, return the results dict.

Remote code: an export whose modeling files are byte-identical to the ones this skipprune ships is loaded
with trust_remote_code (it is our code); any other model's own code runs only with trust_remote_code=True.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import SkippruneError
from ..export.source import index_tensors, read_config, resolve_folder
from ..export.surgery import REMOTE_DIR, REMOTE_FILES
from . import scores

BUNDLED_TEXT = "bundled"
WIKITEXT = "wikitext2"


def is_own_export(folder: Path) -> bool:
    return all(
        (folder / name).is_file() and (folder / name).read_bytes() == (REMOTE_DIR / name).read_bytes()
        for name in REMOTE_FILES
    )


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SkippruneError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def prepare(ref: str, device: str, trust_remote_code: bool = False, revision: str | None = None):
    """Everything but the weights: (folder, trust, tokenizer, config); refuses foreign code and models that
    won't fit."""
    from transformers import AutoTokenizer

    folder, _ = resolve_folder(ref, revision)
    config = read_config(folder, ref)
    needs_code = "auto_map" in config
    trust = trust_remote_code or (needs_code and is_own_export(folder))
    if needs_code and not trust:
        raise SkippruneError(
            f"{ref} ships its own modeling code, which is not skipprune's; pass --trust-remote-code if you trust it"
        )
    _check_fits(folder, ref, device, 4 if device == "cpu" else None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise SkippruneError(f"cannot load the tokenizer of {ref}: {str(e).splitlines()[0]}") from None
    return folder, trust, tokenizer, config


def load_model(folder: Path, trust: bool, device: str):
    """fp32 on CPU (bf16 matmuls there are slow and imprecise), the checkpoint dtype on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if device == "cpu" else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust).to(device)
    except (OSError, ValueError) as e:
        raise SkippruneError(f"cannot load {folder}: {str(e).splitlines()[0]}") from None
    return model.eval()


def _check_fits(folder: Path, ref: str, device: str, bytes_per_param: int | None) -> None:
    from ..export.pipeline import available_memory

    tensors = index_tensors(folder).values()
    need = sum(math.prod(t.shape) * bytes_per_param for t in tensors) if bytes_per_param else sum(t.nbytes for t in tensors)
    if device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0]
    else:
        free = available_memory()
    if need > 0.9 * free:
        raise SkippruneError(
            f"{ref} needs about {need / 2**30:.1f} GiB on {device} but {free / 2**30:.1f} GiB are free; "
            "use a larger device (--device cuda) or a smaller model"
        )


def read_text(text: str | None) -> tuple[str, str]:
    """(text, description) from a file, the bundled held-out split, or WikiText-2 (test) via `datasets`."""
    if text in (None, BUNDLED_TEXT):
        from ..demo import HELDOUT

        return HELDOUT.read_text(encoding="utf-8"), "the bundled Tiny Shakespeare held-out split"
    if text == WIKITEXT:
        try:
            from datasets import load_dataset
        except ImportError:
            raise SkippruneError("--text wikitext2 needs the datasets library: pip install 'skipprune[wikitext]'") from None
        try:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
        except Exception as e:  # offline, or the dataset moved
            raise SkippruneError(f"could not load WikiText-2 ({type(e).__name__}); pass --text FILE instead") from None
        return "\n\n".join(rows), "WikiText-2 raw test split"
    path = Path(text)
    if not path.is_file():
        raise SkippruneError(f"--text {text}: no such file; pass a UTF-8 text file, 'bundled' or 'wikitext2'")
    content = path.read_text(encoding="utf-8", errors="replace")
    if not content.strip():
        raise SkippruneError(f"--text {text} is empty; pass a file with some text")
    return content, f"file {path.name}"


def _max_positions(config: dict) -> int:
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or 2048)


def evaluate(
    model: str,
    baseline: str | None = None,
    text: str | None = None,
    seq_len: int | None = None,
    speed: bool = True,
    device: str = "auto",
    trust_remote_code: bool = False,
    tasks: list[str] | None = None,
    limit: int | None = None,
    log=print,
) -> dict:
    import torch

    if tasks:
        from .tasks import check_available

        check_available()
    device = pick_device(device)
    content, name = read_text(text)
    prepared = [prepare(ref, device, trust_remote_code) for ref in (model, baseline) if ref]
    max_len = _max_positions(prepared[0][3])
    seq_len = seq_len or min(2048, max_len)
    if not 2 <= seq_len <= max_len:
        raise SkippruneError(f"--seq-len {seq_len} must be between 2 and the model's maximum, {max_len}")
    ids = torch.tensor(prepared[0][2](content)["input_ids"])
    if len(ids) < seq_len:
        raise SkippruneError(
            f"the text has {len(ids)} tokens, fewer than one window of {seq_len}; use a longer text or --seq-len"
        )
    loaded = [(load_model(folder, trust, device), tok, folder) for folder, trust, tok, _ in prepared]
    measured = []
    for m, _, folder in loaded:
        log(f"measuring {folder.name}: perplexity over {len(ids) // seq_len} windows of {seq_len} tokens ...")
        measured.append(scores.measure(m, folder, ids, seq_len, name))
    if speed:
        log("measuring 1-token latency and decode speed" + (" (interleaved with the baseline)" if baseline else ""))
        for d, s in zip(measured, scores.speed([m for m, _, _ in loaded])):
            d["speed"] = s
    if tasks:
        from .tasks import run_tasks

        for d, (m, tok, _) in zip(measured, loaded):
            d["tasks"] = run_tasks(m, tok, tasks, limit)
    return scores.results(model, measured[0], measured[1] if baseline else None, baseline)


def table(res: dict) -> str:
    """A readable before/after table for stdout."""
    base = res.get("baseline") or {}
    rows = [("parameters", "params", "{:,}"), ("disk bytes", "disk_bytes", "{:,}"),
            ("KV bytes/token", "kv_bytes_per_token", "{:,}"), ("perplexity", "perplexity", "{:.3f}")]  # fmt: skip
    for key in sorted(res.get("speed", {})):
        if key.startswith(("one_token", "decode")):
            rows.append((key, ("speed", key), "{:.4g}"))
    if res.get("speed"):
        rows.append(("peak memory while generating", ("speed", "peak_generation_memory_bytes"), "{:,}"))
    for task in sorted(res.get("tasks", {})):
        rows.append((task, ("tasks", task, "value"), "{:.4f}"))

    def get(d, key):
        for k in key if isinstance(key, tuple) else (key,):
            d = d.get(k) if isinstance(d, dict) else None
        return d

    lines = [f"{'':34}{'model':>16}" + (f"{'baseline':>16}{'ratio':>9}" if base else "")]
    for label, key, fmt in rows:
        a, b = get(res, key), get(base, key)
        cell = fmt.format(a) if a is not None else "not measured"
        line = f"{label:34}{cell:>16}"
        if base:
            line += f"{fmt.format(b) if b is not None else 'not measured':>16}"
            line += f"{a / b:>9.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else f"{'-':>9}"
        lines.append(line)
    return "\n".join(lines)
