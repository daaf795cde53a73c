"""`skipprune refresh`: an export's code files brought up to this skipprune, proven to compute what they did.

An export lives on the Hub for months and is loaded with transformers releases its code never saw. Refreshing
replaces its configuration and modeling files, and nothing else, by this skipprune's, once the export's own
weights have shown that the logits are unchanged: against the files it had (run only when they are a skipprune
release's, recognised by their hash, or when the user trusts them), or against its source with the removed
sublayers bypassed. Cached greedy decoding must also equal uncached with the new files. The record of the
refresh is appended to skipprune.json.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError, VerificationError, describe, translated
from ..families.toy import quiet
from ..records import RECORD_FILE, ExportRecord, Refresh
from ..remote import OWN_CODE, REMOTE_DIR, released_code
from ..system import available_memory, fsync_path, write_text_durably
from ..version import __version__
from .offload import streaming_map
from .source import read_config


@dataclass
class RefreshResult:
    folder: Path
    refresh: Refresh | None  # None: nothing needed refreshing
    message: str


def refresh(export, source: str | None = None, trust_remote_code: bool = False) -> RefreshResult:
    """Rewrite the code files of the export folder `export` to this skipprune's, after checking its logits
    against its previous code (a skipprune release's, or any with `trust_remote_code`) or against `source`."""
    folder = _folder(export)
    config = read_config(folder, str(folder))
    model_type = config.get("model_type")
    if model_type not in OWN_CODE:
        if "auto_map" not in config:
            return RefreshResult(folder, None, f"{folder} is the stock {model_type} architecture: no code to refresh")
        raise SourceError(
            f"{folder} is not a skipprune export (model_type {model_type!r}): refresh rewrites only skipprune's code"
        )
    auto_map, files = OWN_CODE[model_type]
    if config.get("auto_map") != auto_map:
        raise SourceError(f"{folder}/config.json names other code than skipprune's in auto_map; export it again")
    old = {name: (folder / name).read_bytes() for name in files if (folder / name).is_file()}
    new = {name: (REMOTE_DIR / name).read_bytes() for name in files}
    stale = [name for name in files if old.get(name) != new[name]]
    if not stale:
        return RefreshResult(folder, None, f"{folder} already holds skipprune {__version__}'s code")
    previous = released_code(folder, config)
    if source is None and previous is None and not trust_remote_code:
        raise SourceError(
            f"{folder}'s code files are not a skipprune release's: pass --source SOURCE (the model it was pruned "
            "from) to check against, or --trust-remote-code to run them"
        )
    record = ExportRecord.load(folder) if (folder / RECORD_FILE).is_file() else None
    entry = _check(folder, old, new, source, record)
    entry.files, entry.previous_code = stale, previous or "not skipprune's"
    _replace(folder, {name: new[name] for name in stale})
    if record is not None:
        record.refreshes.append(entry)
        record.save(folder)
    return RefreshResult(folder, entry, f"refreshed {', '.join(stale)} in {folder}: {_verdict(entry)}")


def _folder(export) -> Path:
    folder = Path(export)
    if folder.is_dir():
        return folder
    name = str(export)
    if not folder.exists() and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        raise SourceError(
            f"{name} is not a local folder: download the export first (hf download {name} --local-dir DIR), "
            f"then run skipprune refresh DIR --push {name}"
        )
    raise SourceError(f"EXPORT {name} is not a folder; point at an export folder written by skipprune")


def _check(folder: Path, old: dict, new: dict, source: str | None, record: ExportRecord | None) -> Refresh:
    """Logits of the export with the new files against the reference, on its own weights; cached decoding. An
    export larger than memory allows is run with its weights left on disk, each block read when it runs."""
    import torch
    from transformers import __version__ as transformers_version

    streamed = 2 * sum(p.stat().st_size for p in folder.glob("*.safetensors")) > available_memory()
    with tempfile.TemporaryDirectory(prefix="skipprune-refresh-") as tmp:
        after = _view(folder, Path(tmp), new)
        model = _load(after, "the refreshed export", streamed, Path(tmp))
        vocab = int(model.config.get_text_config(decoder=True).vocab_size)
        ids = torch.randint(3, max(4, min(vocab, 1000)), (2, 16), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        kw = dict(max_new_tokens=2 if streamed else 8, do_sample=False, pad_token_id=0)
        try:
            with torch.no_grad():
                got = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                cached = model.generate(ids[:1, :8], use_cache=True, **kw)
                uncached = model.generate(ids[:1, :8], use_cache=False, **kw)
        except Exception as e:
            raise VerificationError(
                f"{folder} with skipprune {__version__}'s code fails under transformers {transformers_version} "
                f"({describe(e)}); report it with the export's config.json"
            ) from None
        dtype = model.dtype
        del model
        if source is None:
            before = _load(_view(folder, Path(tmp), old), "the export as it was", streamed, Path(tmp))
            want, against = _run(before, ids, mask), "its previous code"
        else:
            reference = _bypassed_source(source, record, (ids, mask), dtype, streamed, Path(tmp))
            want, against = reference, f"the bypassed source {source}"
    keep = mask.bool()
    diff = float((got[keep].float() - want[keep].float()).abs().max())
    numerics = record.verification.numerics if source and record else None
    allowed = numerics.max_abs_logit_diff if numerics else 0.0
    same = torch.equal(cached, uncached)
    entry = Refresh(__version__, transformers_version, [], "", against, diff, int(keep.sum()), same)
    if diff > allowed:
        raise VerificationError(
            f"with skipprune {__version__}'s code, {folder}'s logits differ from {against} (max |diff| {diff:.3g}); "
            "nothing was changed: report it with the export's config.json"
        )
    if not entry.cached_equals_uncached:
        raise VerificationError(
            f"with skipprune {__version__}'s code, {folder}'s cached decoding differs from uncached under transformers "
            f"{transformers_version}; nothing was changed: pip install 'transformers>=5.23,<5.26'"
        )
    return entry


def _view(folder: Path, tmp: Path, code: dict) -> Path:
    """A folder that reads as the export with `code` as its code files: links to everything else. Each view has
    a name of its own, so transformers imports its code as a module of its own."""
    view = Path(tempfile.mkdtemp(dir=tmp, prefix="view"))
    for path in folder.iterdir():
        if path.is_file() and path.name not in code and not path.name.startswith("."):
            (view / path.name).symlink_to(path.resolve())
    for name, data in code.items():
        (view / name).write_bytes(data)
    return view


def _load(view: Path, what: str, streamed: bool, tmp: Path):
    from transformers import AutoModelForCausalLM

    placement = _placement(view, streamed, tmp, own_code=True)
    with quiet(), translated(VerificationError, f"loading {what}", "check the export's files, or pass --source"):
        return AutoModelForCausalLM.from_pretrained(view, trust_remote_code=True, dtype="auto", **placement).eval()


def _placement(folder: Path, streamed: bool, tmp: Path, own_code: bool) -> dict:
    """from_pretrained's arguments that leave the weights on disk, each block read when it runs (when `streamed`)."""
    if not streamed:
        return {}
    offload = tempfile.mkdtemp(dir=tmp, prefix="offload")
    return {"device_map": streaming_map(folder, trust_remote_code=own_code), "offload_folder": offload}


def _run(model, ids, mask):
    import torch

    with torch.no_grad(), translated(VerificationError, "running the export as it was", "pass --source SOURCE instead"):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _bypassed_source(source: str, record: ExportRecord | None, batch: tuple, dtype, streamed: bool, tmp: Path):
    """The source's logits with the export's plan bypassed (the reference every export is verified against)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..families import family_of
    from ..prune.bypass import bypassed
    from .source import resolve_folder

    if record is None:
        raise SourceError(f"--source needs the export's {RECORD_FILE} (its plan); check against its previous code")
    folder, _ = resolve_folder(source)
    family = family_of(read_config(folder, source))
    placement = _placement(folder, streamed, tmp, own_code=False)
    with quiet(), translated(SourceError, f"loading the source {source}", "check SOURCE"):
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **placement).eval()
    with torch.no_grad(), bypassed(ref, record.plan, family):
        return ref(input_ids=batch[0], attention_mask=batch[1], use_cache=False).logits


def _replace(folder: Path, files: dict) -> None:
    """Each file written beside its old self, flushed, then renamed over it: a file is either old or new."""
    with translated(SourceError, f"writing the new code files into {folder}", "check that the folder is writable"):
        for name, data in files.items():
            tmp = folder / f".{name}.refresh-{os.getpid()}"
            write_text_durably(tmp, data.decode("utf-8"))
            os.replace(tmp, folder / name)
        fsync_path(folder)


def _verdict(entry: Refresh) -> str:
    return (
        f"logits equal to {entry.verified_against} on {entry.tokens} tokens (max |diff| {entry.max_abs_logit_diff:g}), "
        f"cached decoding equal to uncached, under transformers {entry.transformers_version}"
    )


__all__ = ["RefreshResult", "refresh"]
