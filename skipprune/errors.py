"""Errors a user can act on. Each message says what is wrong and how to fix it, on one line."""


class SkippruneError(Exception):
    """Bad input or an environment problem; the CLI prints it as one line and exits 1."""


class PlanError(SkippruneError):
    """The requested layers cannot be removed from this model."""


class SourceError(SkippruneError):
    """The source checkpoint cannot be found or read."""


class OutputError(SkippruneError):
    """The output folder cannot be written."""


class VerificationError(SkippruneError):
    """The written checkpoint does not match the plan or the source."""
