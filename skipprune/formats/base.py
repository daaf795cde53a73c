"""The interface every output format implements; its defaults are those of a format that ships no code."""

from __future__ import annotations


class OutputFormat:
    name = ""  # the export record's `architecture`
    option = "default"  # the --format value that selects it
    model_type: str | None = None  # config.json's model_type, where the format has its own
    code_files: tuple[str, ...] = ()  # files copied from skipprune/remote into the export
    model_naming = False  # weights stored under the loaded model's names (for a class other than the stock one)
    engines: tuple[str, ...] = ()  # what runs it besides transformers
    search_note = ""  # how `search` restricts its candidates for this format, for the card

    def expresses(self, plan, adaptive: dict | None) -> bool:
        """Whether this format is the one to write `plan` in, among those of its option."""
        return True

    def check(self, config: dict, plan, family, adaptive: dict | None) -> None:
        """Refuse, in one line with the reason, what this format cannot hold exactly."""

    def config(self, text: dict, plan, family, adaptive: dict | None) -> dict:
        """config.json, from the stock config of the kept blocks (`text`)."""
        raise NotImplementedError

    stand_in_width = 0  # the width of the all-zero FFNs in `stand_ins`

    def stand_ins(self, plan) -> list[int]:
        """Output layers that get an all-zero FFN of `stand_in_width` (see nemotron_nas)."""
        return []

    def removed_mlp_cost(self, hidden: int) -> int:
        """Weights a removed MLP still costs in a layer that keeps its attention."""
        return 0

    def frozen(self, record) -> tuple[str, ...]:
        """Prefixes of the weights heal must never train."""
        return ()

    def tokenizer_config(self, config: dict) -> dict:
        """The stock config to hand the tokenizer of an export, so that no remote code runs."""
        return config

    def card_note(self, record, name: str) -> str:
        """What the model card says about loading or serving the export named `name`."""
        raise NotImplementedError
