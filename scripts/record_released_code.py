"""Add the code files this skipprune ships into exports to skipprune/remote/released.json (sha256 ->
the version in which they first appeared), so that a later `skipprune refresh` recognises them as skipprune's
own and may run them to check against. tests/test_compat.py fails until the shipped files are listed.

    python scripts/record_released_code.py
"""

import hashlib
import json
from pathlib import Path

from skipprune.remote import NAS_FILES, REMOTE_DIR
from skipprune.version import __version__

path = REMOTE_DIR / "released.json"
known = json.loads(path.read_text(encoding="utf-8"))
for name in dict.fromkeys(NAS_FILES):
    known.setdefault(hashlib.sha256((REMOTE_DIR / name).read_bytes()).hexdigest(), __version__)
path.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
print(f"{len(known)} released code files in {Path(path).name}")
