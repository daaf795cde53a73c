"""Push an export folder to the Hugging Face Hub.

The token comes from HF_TOKEN or the login cache (huggingface_hub reads both); it is never printed, logged
or written. The local folder is only read: the uploaded card is rendered with the repo id in its loading
snippet, in memory. A push that fails midway can simply be run again: files the Hub already holds (LFS
objects by hash) are not sent twice.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SkippruneError


def push(folder, repo_id: str, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, log=print) -> str:  # fmt: skip
    """Upload `folder` to `repo_id` (created if needed); returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise SkippruneError(f"{folder} is not a model folder (no config.json or .safetensors); export one first")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SkippruneError(f"invalid repo id {repo_id!r}: use NAME or NAMESPACE/NAME with letters, digits, '-', '_', '.'") from None
    token = get_token()
    if not token:
        raise SkippruneError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = url.repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                      for p in sorted(folder.rglob("*")) if p.is_file() and not _hidden(p.relative_to(folder))]  # fmt: skip
        card = _card_for(folder, repo_id)
        if card is not None:
            operations = [op for op in operations if op.path_in_repo != "README.md"]
            operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
        log(f"uploading {len(operations)} files to {repo_id} ...")
        api.create_commit(repo_id, operations=operations, revision=revision,
                          commit_message=commit_message or f"Upload {folder.name} (skipprune)")  # fmt: skip
    except SkippruneError:
        raise
    except Exception as e:  # HTTP errors, refused connections: say what happened, keep the local folder
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SkippruneError(
            f"push to {repo_id} failed ({type(e).__name__}: {reason}); the local export is unchanged, run the same "
            "command again to resume"
        ) from None
    return str(url) + (f"/tree/{revision}" if revision else "")


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _card_for(folder: Path, repo_id: str) -> bytes | None:
    """The card re-rendered with the repo id as the model name, if this is a skipprune export."""
    if not (folder / "skipprune.json").is_file():
        return None
    from .card import load_records, render_card

    return render_card(*load_records(folder), repo_id).encode()
