"""Text to measure on: a file, the bundled held-out split, or WikiText-2 (test), cut into token windows."""

from __future__ import annotations

from pathlib import Path

from ..data import HELDOUT, HELDOUT_NAME
from ..errors import MeasureError

BUNDLED = "bundled"
WIKITEXT = "wikitext2"


ANY_TEXT = "a UTF-8 text file, 'bundled' or 'wikitext2'"


def check_text_arg(text: str | None, choices: str = ANY_TEXT) -> None:
    """Fail on a missing or empty --text file before any model is loaded; `choices` says what the command takes."""
    if text in (None, BUNDLED, WIKITEXT):
        return
    path = Path(text)
    if not path.is_file():
        raise MeasureError(f"--text {text}: no such file; pass {choices}")
    if path.stat().st_size == 0:
        raise MeasureError(f"--text {text} is empty; pass a file with some text")


def calibration_note(text: str | None) -> str | None:
    """A line to log when calibration reads the bundled held-out split, which `eval` scores on by default."""
    if text not in (None, BUNDLED):
        return None
    return (
        f"calibrating on {HELDOUT_NAME}, which `eval` scores on by default: pass --text with other text to keep "
        "the choice apart from the evaluation"
    )


def text_name(text: str | None) -> str:
    """How records and plots name a --text value: a file by its name only (records are shared)."""
    if text in (None, BUNDLED):
        return HELDOUT_NAME
    return "WikiText-2 raw test split" if text == WIKITEXT else f"file {Path(text).name}"


def read_text(text: str | None, choices: str = ANY_TEXT) -> tuple[str, str]:
    """(text, text_name(text))."""
    check_text_arg(text, choices)
    if text in (None, BUNDLED):
        return HELDOUT.read_text(encoding="utf-8"), text_name(text)
    if text == WIKITEXT:
        try:
            from datasets import load_dataset
        except ImportError:
            raise MeasureError(
                "--text wikitext2 needs the datasets library: pip install 'skipprune[wikitext]'"
            ) from None
        try:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
        except Exception as e:  # offline, or the dataset moved
            raise MeasureError(f"could not load WikiText-2 ({type(e).__name__}); pass --text FILE instead") from None
        return "\n\n".join(rows), text_name(text)
    path = Path(text)
    content = path.read_text(encoding="utf-8", errors="replace")
    if not content.strip():
        raise MeasureError(f"--text {text} is empty; pass a file with some text")
    return content, text_name(text)


def token_windows(tokenizer, text: str, seq_len: int, samples: int | None = None, vocab_size: int | None = None):
    """The text tokenized once and cut into non-overlapping windows of `seq_len` tokens, at most `samples` of
    them: a (windows, seq_len) tensor. The tail shorter than a window is dropped. `vocab_size`: the model's
    embedding rows, which every token id must fall within."""
    import torch

    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if vocab_size and len(ids) and int(ids.max()) >= vocab_size:
        raise MeasureError(
            f"the tokenizer gives token id {int(ids.max())}, but the model has {vocab_size} embeddings: the "
            "tokenizer files beside its config.json are not this model's; put its own tokenizer there"
        )
    count = len(ids) // seq_len
    if count == 0:
        raise MeasureError(
            f"the text has {len(ids)} tokens, fewer than one window of {seq_len}; "
            "use a longer --text or a smaller --seq-len"
        )
    count = min(count, samples) if samples else count
    return ids[: count * seq_len].view(count, seq_len)


def overlap(scored: str, trained: str) -> float:
    """The share of the scoring text's lines (of some length: not speaker names or blank lines) that also occur
    in the other (training, calibration) text."""
    lines = {line.strip() for line in scored.splitlines() if len(line.strip()) > 20}
    if not lines:
        return 1.0 if scored.strip() in trained else 0.0
    return len(lines & {line.strip() for line in trained.splitlines()}) / len(lines)
