"""Output formats: how an export writes what a plan keeps, one module each behind `OutputFormat`.

A format says what it can express (and why not, in one line), writes the export's config.json from the stock
config of the kept blocks, names the code files it ships and the all-zero stand-ins it needs, what heal must
never train, what a removed MLP still costs, which engines run it and what the card says about loading it.
`FORMATS` is the registry: a new format is its module plus one line there. `export --format OPTION` picks the
first registered format of that option that can express the plan (the stock architecture before skipprune's
own for `default`); the export, search's costs, heal, the card and gguf ask the format, never its name.
"""

from __future__ import annotations

from ..errors import PlanError
from .base import OutputFormat
from .nemotron_nas import NemotronNas
from .own import SkipPruneOwn
from .stock import Stock

FORMATS: tuple[OutputFormat, ...] = (Stock(), SkipPruneOwn(), NemotronNas())
OPTIONS = tuple(dict.fromkeys(f.option for f in FORMATS))  # what --format takes


def check_option(option: str) -> None:
    if option not in OPTIONS:
        raise PlanError(f"unknown format {option!r}: use {' or '.join(OPTIONS)}")


def chosen(option: str, plan, adaptive: dict | None = None) -> OutputFormat:
    """The format an export with `--format option` writes for `plan`."""
    check_option(option)
    return next(f for f in FORMATS if f.option == option and f.expresses(plan, adaptive))


def of_option(option: str) -> OutputFormat:
    """The first format an option selects (what describes the option as a whole: search's note)."""
    check_option(option)
    return next(f for f in FORMATS if f.option == option)


def of_export(architecture: str) -> OutputFormat:
    """The format of an export, from its record's `architecture`."""
    return next(f for f in FORMATS if f.name == architecture)


def of_config(config: dict) -> OutputFormat:
    """The format of an export, from its config.json."""
    return next((f for f in FORMATS if f.model_type == config.get("model_type")), FORMATS[0])


__all__ = ["FORMATS", "OPTIONS", "OutputFormat", "check_option", "chosen", "of_config", "of_export", "of_option"]
