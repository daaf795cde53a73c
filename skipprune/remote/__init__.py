"""The configuration and modeling files copied into every export that is not the stock architecture.

They import only torch and transformers (they run on machines without skipprune). This module also says
when a folder's remote code is exactly skipprune's own, which is the only code skipprune runs unasked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

REMOTE_DIR = Path(__file__).parent
# sha256 of every version of these files that a skipprune release shipped -> the release it first appeared in
RELEASED = json.loads((REMOTE_DIR / "released.json").read_text(encoding="utf-8"))
REMOTE_FILES = ("configuration_skipprune.py", "modeling_skipprune.py")
AUTO_MAP = {
    "AutoConfig": "configuration_skipprune.SkipPruneConfig",
    "AutoModelForCausalLM": "modeling_skipprune.SkipPruneForCausalLM",
}
# The serving format (DeciLM "nemotron-nas"); its modeling file reuses the stub of modeling_skipprune.py.
NAS_FILES = ("configuration_skipprune_nas.py", "modeling_skipprune_nas.py", *REMOTE_FILES)
NAS_AUTO_MAP = {
    "AutoConfig": "configuration_skipprune_nas.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_skipprune_nas.DeciLMForCausalLM",
}
# model_type -> (auto_map, files) of each kind of export that ships skipprune's code.
OWN_CODE = {"skipprune": (AUTO_MAP, REMOTE_FILES), "nemotron-nas": (NAS_AUTO_MAP, NAS_FILES)}


def is_own_code(folder: Path, config: dict) -> bool:
    """True when every piece of code that loading `folder` could run is skipprune's own: config.json's auto_map
    names exactly skipprune's classes for its model_type, their files are byte-identical to the shipped ones,
    and the tokenizer names no code of its own (skipprune loads tokenizers without remote code anyway)."""
    auto_map, files = OWN_CODE.get(config.get("model_type"), (None, ()))
    if auto_map is None or config.get("auto_map") != auto_map:
        return False
    if any(
        not (folder / name).is_file() or (folder / name).read_bytes() != (REMOTE_DIR / name).read_bytes()
        for name in files
    ):
        return False
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return not (isinstance(tokenizer_config, dict) and "auto_map" in tokenizer_config)


def released_code(folder: Path, config: dict) -> str | None:
    """'skipprune <versions>' when `folder` ships skipprune's code files for its model_type as some skipprune
    release wrote them (known by hash; the current ones included), else None."""
    auto_map, files = OWN_CODE.get(config.get("model_type"), (None, ()))
    if auto_map is None or config.get("auto_map") != auto_map:
        return None
    versions = []
    for name in files:
        path = folder / name
        release = RELEASED.get(hashlib.sha256(path.read_bytes()).hexdigest()) if path.is_file() else None
        if release is None:
            return None
        versions.append(release)
    return "skipprune " + ", ".join(dict.fromkeys(versions))
