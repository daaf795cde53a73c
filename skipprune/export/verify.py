"""Check a written export against its plan and its source.

Structure (always, without importing torch): the shard headers hold exactly the planned names, shapes and
dtypes, and every kept tensor's bytes equal the source's, compared byte for byte (stronger than comparing
hashes, and at memory speed). Model (with numerics): the output model, built on the meta device from the
written config, expects exactly those tensors, and the logits of the loaded export equal those of the
source model with the same sublayers bypassed.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import VerificationError
from ..prune.families import Family
from ..prune.plan import PrunePlan
from .source import Source, index_tensors
from .writer import OutTensor, convert_bytes

_CHUNK = 16 << 20


def verify_structure(folder: Path, expected: list[OutTensor]) -> dict:
    written = index_tensors(folder)
    want = {t.name: t for t in expected}
    if set(written) != set(want):
        extra, missing = sorted(set(written) - set(want)), sorted(set(want) - set(written))
        raise VerificationError(f"export holds unexpected tensors {extra[:3]} / lacks {missing[:3]}; please report this")
    for name, info in written.items():
        if (info.dtype, info.shape) != (want[name].dtype, want[name].shape):
            raise VerificationError(f"tensor {name} was written as {info.dtype}{list(info.shape)}; please report this")
    fds: dict[Path, int] = {}
    try:
        for name, info in sorted(written.items(), key=lambda kv: (kv[1].file, kv[1].start)):
            t = want[name]
            if t.dtype != t.source.dtype:
                same = _window(fds, info, 0, info.nbytes).tobytes() == convert_bytes(t)
            else:
                same = all(_same_chunk(fds, info, t.source, a) for a in range(0, info.nbytes, _CHUNK))
            if not same:
                raise VerificationError(f"bytes of {name} differ from the source; the disk may be failing, export again")
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"tensors": len(written), "bytes_compared": sum(i.nbytes for i in written.values())}


def _same_chunk(fds: dict, out, src, a: int) -> bool:
    n = min(_CHUNK, out.nbytes - a)
    x, y = _window(fds, out, a, n), _window(fds, src, a, n)
    body = n - n % 8  # compare 8 bytes at a time, then the tail
    return bool(np.array_equal(x[:body].view(np.uint64), y[:body].view(np.uint64))) and x[body:].tobytes() == y[body:].tobytes()


def _window(fds: dict, info, a: int, n: int) -> np.ndarray:
    """Bytes a..a+n of a tensor as a read-only array over a private small mapping of the page cache: no
    copy into Python, and resident memory stays bounded by the window (unmapped when the array goes)."""
    if info.file not in fds:
        fds[info.file] = os.open(info.file, os.O_RDONLY)
    start = info.start + a
    base = start - start % mmap.ALLOCATIONGRANULARITY
    if n == 0:
        return np.empty(0, dtype=np.uint8)
    view = mmap.mmap(fds[info.file], start - base + n, offset=base, access=mmap.ACCESS_READ)
    return np.frombuffer(view, dtype=np.uint8, count=n, offset=start - base)


def _check_model_expects(folder: Path, names: set[str]) -> None:
    """Build the output model without memory (meta device) from the written config; compare its tensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    expected = set(model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        expected.discard("lm_head.weight")
    if names != expected:
        raise VerificationError(
            f"the exported model expects {sorted(expected - names)[:3]} and does not use {sorted(names - expected)[:3]}; "
            "please report this"
        )


def verify_numerics(
    folder: Path, source: Source, plan: PrunePlan, family: Family, dtype: str = "auto", tokens: int = 16
) -> dict:
    """Max |logit difference| between the export and the bypassed source, fp32, with a padded batch.

    With a dtype conversion the reference is the source with its weights rounded to that dtype."""
    import torch

    from transformers import AutoModelForCausalLM

    from ..prune.masking import bypassed

    _check_model_expects(folder, set(index_tensors(folder)))
    vocab = int(source.config.get("vocab_size") or source.config.get("text_config", {}).get("vocab_size"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, tokens), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, : tokens // 4] = 0  # left padding in the second row
    reference = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    if dtype != "auto":
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(p.to(getattr(torch, dtype)))
    with torch.no_grad(), bypassed(reference, plan, family):
        want = reference(input_ids=ids, attention_mask=mask).logits
    del reference
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
    with torch.no_grad():
        got = exported(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    diff = (got - want)[real].abs().max().item()
    if not diff <= 1e-5:
        raise VerificationError(f"exported logits differ from the bypassed source by {diff:.3g} (> 1e-5); please report this")
    return {"max_abs_logit_diff": diff, "tokens": int(real.sum()), "dtype": "float32"}
