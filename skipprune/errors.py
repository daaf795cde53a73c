"""Errors a user can act on, by topic. Each message says what is wrong and how to fix it, on one line.

`translated()` is the one place where failures of the libraries underneath (OSError, HTTP errors, safetensors
and transformers exceptions) become these errors; the CLI prints them as `error: ...` and exits 1.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager


class SkippruneError(Exception):
    """Bad input or an environment problem: printed as one line, exit status 1."""


class SourceError(SkippruneError):
    """The source checkpoint cannot be found, read, or is inconsistent with itself."""


class PlanError(SkippruneError):
    """The requested layers cannot be removed from this model, or an option value is invalid."""


class OutputError(SkippruneError):
    """An output (folder, JSON or plot path) cannot be written."""


class VerificationError(SkippruneError):
    """The written checkpoint does not match the plan or the source."""


class RecordError(SkippruneError):
    """skipprune.json or results.json is missing, malformed, or from an unknown version."""


class MeasureError(SkippruneError):
    """A model cannot be measured as asked (text, device, memory, tasks)."""


class HubError(SkippruneError):
    """The Hugging Face Hub refused or could not be reached."""


def describe(exc: BaseException) -> str:
    """'TypeName: first line of the message', for quoting a library's exception inside one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def translated(kind: type[SkippruneError], doing: str, fix: str):
    """Run the block; any library failure becomes one `kind` error: '<doing> failed (<why>); <fix>'.

    skipprune's own errors and interruptions pass through unchanged; a full disk always says so."""
    try:
        yield
    except (SkippruneError, KeyboardInterrupt, SystemExit):
        raise
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise OutputError(f"disk full while {doing}: free some space and run again") from None
        raise kind(f"{doing} failed ({e.strerror or describe(e)}); {fix}") from None
    except Exception as e:
        raise kind(f"{doing} failed ({describe(e)}); {fix}") from None
