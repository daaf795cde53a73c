"""Push an export folder to the Hugging Face Hub.

Everything local is checked before anything remote is created: the folder, its records, the repo id and the
token. The token comes from HF_TOKEN or the login cache (huggingface_hub reads both); it is never printed,
logged or written. The local folder is only read: the uploaded card is rendered with the repo id in its
loading snippet, in memory. A push that fails midway can simply be run again: files the Hub already holds
(LFS objects by hash) are not sent twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HubError, translated
from ..records import RECORD_FILE, RESULTS_FILE, ExportRecord, Results
from .card import IMPORTANCE_PNG, render_card

log = logging.getLogger(__name__)


def check_push(repo_id: str) -> str:
    """A valid repo id and a token, or a one-line error; returns the token. Sends nothing."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"invalid repo id {repo_id!r}: use NAME or NAMESPACE/NAME with letters, digits, '-', '_', '.'"
        ) from None
    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    return token


def push(
    folder,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload `folder` to `repo_id` (created if needed); returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise HubError(f"{folder} is not a model folder (no config.json or .safetensors); export one first")
    records = _records(folder)
    token = check_push(repo_id)
    api = HfApi(token=token)
    resume = "the local export is unchanged, run the same command again to resume"
    with translated(HubError, f"creating {repo_id} on the Hub", resume):
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = url.repo_id
    with translated(HubError, f"push to {repo_id}", resume):
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not _hidden(p.relative_to(folder))]
        operations = [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files
        ]
        if records is not None:
            card = render_card(*records, repo_id, (folder / IMPORTANCE_PNG).is_file()).encode()
            operations = [op for op in operations if op.path_in_repo != "README.md"]
            operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
        log.info("uploading %d files to %s ...", len(operations), repo_id)
        message = commit_message or f"Upload {folder.name} (skipprune)"
        api.create_commit(repo_id, operations=operations, revision=revision, commit_message=message)
    return str(url) + (f"/tree/{revision}" if revision else "")


def _records(folder: Path) -> tuple[ExportRecord, Results | None] | None:
    """The export's records, checked, or None for a folder skipprune did not write (pushed as it is)."""
    if not (folder / RECORD_FILE).is_file():
        return None
    results = folder / RESULTS_FILE
    return ExportRecord.load(folder), Results.load(results) if results.is_file() else None


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)
