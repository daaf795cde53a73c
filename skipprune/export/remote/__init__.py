"""The configuration and modeling files copied into every export that is not the stock architecture.

They import only torch and transformers (they run on machines without skipprune). This module also says
when a folder's remote code is exactly skipprune's own, which is the only code skipprune runs unasked."""

from __future__ import annotations

import json
from pathlib import Path

REMOTE_DIR = Path(__file__).parent
REMOTE_FILES = ("configuration_skipprune.py", "modeling_skipprune.py")
AUTO_MAP = {
    "AutoConfig": "configuration_skipprune.SkipPruneConfig",
    "AutoModelForCausalLM": "modeling_skipprune.SkipPruneForCausalLM",
}


def is_own_code(folder: Path, config: dict) -> bool:
    """True when every piece of code that loading `folder` could run is skipprune's own: config.json's auto_map
    names exactly skipprune's two classes, both files are byte-identical to the shipped ones, and the
    tokenizer names no code of its own (skipprune loads tokenizers without remote code anyway)."""
    if config.get("model_type") != "skipprune" or config.get("auto_map") != AUTO_MAP:
        return False
    if any(
        not (folder / name).is_file() or (folder / name).read_bytes() != (REMOTE_DIR / name).read_bytes()
        for name in REMOTE_FILES
    ):
        return False
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return not (isinstance(tokenizer_config, dict) and "auto_map" in tokenizer_config)
