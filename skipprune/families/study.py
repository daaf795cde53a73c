"""The family study, remembered on disk: derive the split of each kind of block, prove it exact, and keep the
fields of `Family` they determine under ~/.cache/skipprune/families/ ($XDG_CACHE_HOME), per skipprune code,
transformers version and family options. Losing that cache (a read-only home, a full disk) only costs the study
again."""

from __future__ import annotations

from .check import self_check
from .derive import derive_sublayers
from .refusal import Refusal
from .toy import quiet, shrink


def study(text_type: str, text_json: str) -> dict:
    """derive_sublayers + self_check for a language model's config, remembered on disk (per skipprune code,
    transformers version and family options): the fields of Family they determine."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import transformers

    from ..remote import REMOTE_DIR

    here = Path(__file__).parent
    code = (
        b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))
        + (REMOTE_DIR / "modeling_skipprune.py").read_bytes()
    )
    shrunk = json.dumps(shrink(json.loads(text_json)), sort_keys=True)
    key = hashlib.sha256(code + transformers.__version__.encode() + text_type.encode() + shrunk.encode()).hexdigest()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skipprune" / "families"
    cached = root / f"{key}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    with quiet():
        derived = derive_sublayers(text_type, text_json)
        refusal = derived if isinstance(derived, Refusal) else self_check(text_type, text_json, derived["kinds"])
    if refusal is None:
        fields = dict(derived)
    elif refusal.what == "attention":
        fields = {**derived, "no_attention": refusal.why}
    else:
        fields = {"no_sublayers": refusal.why}
    try:  # a cache: losing it (read-only home, full disk) only costs the study again
        root.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fields), encoding="utf-8")
        tmp.replace(cached)
    except OSError:
        pass
    return fields
