"""Check a written export against its plan and its source.

Structure (always): the shard headers hold exactly the planned names, shapes and dtypes; the output model,
built on the meta device from the written config, expects exactly those tensors; every kept tensor's bytes
equal the source's, compared byte for byte. Numerics (when asked): logits of the loaded export equal those
of the source model with the same sublayers bypassed.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from ..errors import VerificationError
from ..prune.families import Family
from ..prune.plan import PrunePlan
from .source import Source, index_tensors
from .writer import OutTensor, _convert

_CHUNK = 64 << 20


def verify_structure(folder: Path, expected: list[OutTensor]) -> dict:
    written = index_tensors(folder)
    want = {t.name: t for t in expected}
    if set(written) != set(want):
        extra, missing = sorted(set(written) - set(want)), sorted(set(want) - set(written))
        raise VerificationError(f"export holds unexpected tensors {extra[:3]} / lacks {missing[:3]}; please report this")
    for name, info in written.items():
        if (info.dtype, info.shape) != (want[name].dtype, want[name].shape):
            raise VerificationError(f"tensor {name} was written as {info.dtype}{list(info.shape)}; please report this")
    _check_model_expects(folder, set(written))
    compared = 0
    maps: dict[Path, mmap.mmap] = {}
    try:
        for name, info in written.items():
            t = want[name]
            out = _map(maps, info.file)[info.start : info.end] if info.nbytes <= _CHUNK else None
            if t.dtype != t.source.dtype:
                same = (out if out is not None else _slice(maps, info, 0, info.nbytes)) == _convert(t)
            else:
                same = _same_bytes(maps, info, t.source)
            if not same:
                raise VerificationError(f"bytes of {name} differ from the source; the disk may be failing, export again")
            compared += info.nbytes
    finally:
        for m in maps.values():
            m.close()
    return {"tensors": len(written), "bytes_compared": compared}


def _map(maps: dict, path: Path) -> mmap.mmap:
    if path not in maps:
        with open(path, "rb") as f:
            maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return maps[path]


def _slice(maps, info, a, b) -> bytes:
    return _map(maps, info.file)[info.start + a : info.start + b]


def _same_bytes(maps, out_info, src_info) -> bool:
    for a in range(0, out_info.nbytes, _CHUNK):
        b = min(a + _CHUNK, out_info.nbytes)
        if _slice(maps, out_info, a, b) != _slice(maps, src_info, a, b):
            return False
    return True


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
