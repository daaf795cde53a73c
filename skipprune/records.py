"""The typed records that flow between the stages and live in an export folder.

- `ExportRecord` (`skipprune.json`): what was removed from which source, and how the result was verified.
- `Results` (`results.json`): what a model, and optionally its baseline, measured.
- `PlanFile` (written by `skipprune search`): a plan, the model it fits, and how it was chosen (`PlanSearch`),
  which `export --plan` carries into `skipprune.json` and the card.

Both are versioned (`schema_version`) and symmetric (`save` / `load`, `to_dict` / `from_dict`). Loading checks
every field's type before anything uses it, reads the previous schema version, refuses a newer one, and
tolerates unknown keys with a warning (a newer skipprune may have added them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import RecordError
from .families.config import text_config
from .prune.plan import PrunePlan
from .prune.search import Step
from .system import write_text_durably
from .version import __version__

log = logging.getLogger(__name__)

RECORD_FILE = "skipprune.json"
RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2


# -- skipprune.json ------------------------------------------------------------------------------------------


@dataclass
class SourceRef:
    id: str  # a Hub id, or a local folder's name (never its path: records are shared)
    revision: str | None = None  # the Hub commit sha; None for a local folder
    model_type: str | None = None

    @property
    def on_hub(self) -> bool:
        return self.revision is not None

    @property
    def label(self) -> str:
        """How a card names the source: `org/name@sha` on the Hub, the folder name for a local copy."""
        return f"{self.id}@{self.revision}" if self.on_hub else Path(self.id).name


@dataclass
class StructureCheck:
    tensors: int
    bytes_compared: int
    converted_to: str | None = None  # with --dtype: kept tensors were compared with the source converted to it
    model_expects_them: bool = False  # the output model, built from the written config, expects exactly these


@dataclass
class NumericCheck:
    max_abs_logit_diff: float
    tokens: int
    dtype: str
    mode: str = "in-memory"


@dataclass
class Verification:
    structure: StructureCheck
    numerics: NumericCheck | None = None
    numerics_skipped: str | None = None  # why the logit check did not run


@dataclass
class Healing:
    """How an export's weights were trained after the surgery (`skipprune heal`): its kept tensors are then no
    longer the source's, and its logits no longer the bypassed source's."""

    method: str  # "distill" (KL to the teacher's logits) or "lm" (next-token loss)
    text: str  # what it was trained on
    tokens: int
    steps: int
    lr: float
    lora_rank: int | None  # None: full fine-tuning of the decoder blocks
    seed: int
    seconds: float
    teacher: str | None = None
    score_text: str | None = None  # held-out text of the scores below (never the training text)
    perplexity: dict[str, float] = field(default_factory=dict)  # source / pruned / healed on score_text
    tensors_trained: int = 0
    score_seq_len: int | None = None  # the scoring windows' length in tokens
    command: str | None = None  # the heal command that reproduces it (names, never paths)
    train: str | None = None  # "last:K,head": what was trained fully without LoRA (None: LoRA, or every block)
    processes: int = 1  # how many processes shared each batch


@dataclass
class Refresh:
    """An export's code files replaced by a later skipprune's (`skipprune refresh`); its tensors, config and card
    are untouched, and its logits were compared with what it computed before."""

    skipprune_version: str  # whose code files it holds since
    transformers_version: str  # installed during the check
    files: list[str]
    previous_code: str  # the skipprune releases in which the replaced files first appeared, or "not skipprune's"
    verified_against: str  # "its previous code" or "the bypassed source <label>"
    max_abs_logit_diff: float
    tokens: int
    cached_equals_uncached: bool


@dataclass
class PlanScore:
    """One row of a search's held-out table: a strategy's plan at the same budget, scored on the eval text."""

    strategy: str  # "search", "greedy", "last-N", "one-shot measured", "lowest-importance", "best-window", ...
    plan: PrunePlan
    params_removed: float
    latency_removed: float
    perplexity: float


@dataclass
class PlanSearch:
    """How a plan was chosen by `skipprune search`."""

    objective: str  # "kl" (from the source's next-token distribution) or "perplexity"
    objective_value: float  # mean per token over the calibration windows (nats)
    text: str  # the calibration text, named, never a path
    windows: int
    seq_len: int
    tokens: int
    budgets: list[str]
    kinds: list[str]
    algorithm: str  # "greedy" or "greedy + swap"
    steps: list[Step]
    evaluations: int
    forward_equivalents: float  # FLOP-weighted full forwards over the calibration windows
    seconds: float
    keep: list[int] = field(default_factory=list)
    format: str = "default"
    prompt_tokens: int = 1024  # the latency cost model's prompt length and batch
    batch: int = 1
    greedy_objective: float | None = None
    peak_memory_bytes: int | None = None
    eval_text: str | None = None
    eval_windows: int | None = None
    eval_seq_len: int | None = None
    comparison: list[PlanScore] = field(default_factory=list)


@dataclass
class ModelShape:
    """What a plan file's plan fits: a plan made for one model is refused for another."""

    label: str
    model_type: str
    num_layers: int
    hidden_size: int | None = None
    vocab_size: int | None = None
    params: int | None = None

    def mismatch(self, config: dict, label: str) -> str | None:
        """Why a model of `config` is not this one, or None."""
        text = text_config(config)
        theirs = {
            "model_type": config.get("model_type"),
            "num_layers": text.get("num_hidden_layers", text.get("n_layer")),
            "hidden_size": text.get("hidden_size", text.get("n_embd")),
            "vocab_size": text.get("vocab_size"),
        }
        diff = [
            f"{k} {getattr(self, k)} vs {v}"
            for k, v in theirs.items()
            if getattr(self, k) is not None and v != getattr(self, k)
        ]
        return f"the plan was made for {self.label} and {label} differs ({', '.join(diff)})" if diff else None


@dataclass
class ByteCounts:
    source: int
    output: int


class _Versioned:
    """What both records share: plain JSON data out, checked data in (schema version 1 upgraded first)."""

    FILE = ""

    def to_dict(self) -> dict:
        return encode(self)

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None):
        if isinstance(data, dict) and data.get("schema_version", 1) == 1:
            data = {**cls._upgrade_v1(data), "schema_version": SCHEMA_VERSION}
        return decode(cls, data, where or cls.FILE)


@dataclass
class ExportRecord(_Versioned):
    source: SourceRef
    plan: PrunePlan
    architecture: str  # "stock" (only whole blocks removed), "skipprune" or "nemotron-nas"
    bytes: ByteCounts
    verification: Verification
    dtype: str = "auto"
    format: str = "default"  # or "nemotron-nas", the serving format
    zero_ffn_layers: list[int] = field(default_factory=list)  # output layers given an all-zero FFN (serving)
    # Per source layer, its token mixer ('attention', 'linear attention', 'mamba', ...), where the family's is not
    # always attention; empty otherwise.
    mixers: list[str] = field(default_factory=list)
    healing: Healing | None = None
    search: PlanSearch | None = None  # how the plan was chosen (export --plan FILE)
    adaptive_ffn_skip: dict | None = None
    ignored_tensors: list[str] = field(default_factory=list)  # source tensors the model never reads
    command: str | None = None  # how to reproduce it, without local paths
    refreshes: list[Refresh] = field(default_factory=list)  # later skipprunes' code files, oldest first
    skipprune_version: str = __version__
    transformers_version: str | None = None
    schema_version: int = SCHEMA_VERSION
    FILE = RECORD_FILE

    @property
    def stock(self) -> bool:
        return self.architecture == "stock"

    @staticmethod
    def _upgrade_v1(data: dict) -> dict:
        """Version 1 wrote the skipped logit check as a string in place of its result."""
        verification = dict(data.get("verification") or {})
        if isinstance(verification.get("numerics"), str):
            verification["numerics_skipped"] = verification.pop("numerics")
        return {**data, "verification": verification}

    def save(self, folder: Path, flush: bool = True) -> Path:
        """`flush=False` into a staging folder that `publish` flushes (see write_text_durably)."""
        return _save(Path(folder) / RECORD_FILE, self.to_dict(), flush)

    @classmethod
    def load(cls, folder: Path) -> ExportRecord:
        path = Path(folder) / RECORD_FILE
        if not path.is_file():
            raise RecordError(f"{folder} has no {RECORD_FILE}; point at a folder written by `skipprune export`")
        return cls.from_dict(_read(path, "export again or restore the file"), str(path))


# -- plan files ----------------------------------------------------------------------------------------------

PLAN_KIND = "skipprune plan"


@dataclass
class PlanFile(_Versioned):
    model: ModelShape
    plan: PrunePlan
    search: PlanSearch
    kind: str = PLAN_KIND
    skipprune_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    FILE = "plan file"

    def save(self, path: Path) -> Path:
        return _save(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> PlanFile:
        path = Path(path)
        if not path.is_file():
            raise RecordError(f"{path}: no such plan file; write one with `skipprune search MODEL --budget ...`")
        data = _read(path, "write it again with `skipprune search`")
        if not isinstance(data, dict) or data.get("kind") != PLAN_KIND:
            raise RecordError(
                f"{path} is not a skipprune plan file{_kind_of(data)}; write one with `skipprune search MODEL "
                "--budget ...`"
            )
        return cls.from_dict(data, str(path))


# -- results.json --------------------------------------------------------------------------------------------


@dataclass
class PerplexityProtocol:
    text: str  # what was read: "file NAME", the bundled split, or WikiText-2 (never a local path)
    tokens: int
    windows: int
    seq_len: int
    predicted_tokens: int
    unit: str = "token"
    # "window by window" through the whole model, or "block by block" over all windows (weights on disk);
    # the same arithmetic either way
    schedule: str = "window by window"


@dataclass
class Latency:
    batch: int
    prompt_tokens: int
    seconds: float  # median time to predict one token for the whole batch (prefill)
    spread: float | None = None  # interquartile range of the repeats / their median


@dataclass
class Speed:
    device: str
    dtype: str
    latency: list[Latency] = field(default_factory=list)
    decode_tokens: int = 128
    decode_tokens_per_s: float | None = None
    decode_spread: float | None = None  # interquartile range of the repeats' times / their median
    peak_generation_memory_bytes: int | None = None  # where the device reports it (CUDA)
    threads: int | None = None  # torch's CPU threads during the timing


@dataclass
class TaskScore:
    value: float
    metric: str
    num_fewshot: int
    stderr: float | None = None
    limit: int | None = None
    local: bool = False  # a local task YAML, not a Hub dataset


@dataclass
class Measurement:
    model: str
    params: int | None = None
    disk_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    perplexity: float | None = None
    perplexity_protocol: PerplexityProtocol | None = None
    speed: Speed | None = None
    tasks: dict[str, TaskScore] = field(default_factory=dict)


@dataclass
class Results(_Versioned, Measurement):
    """One model's measurements, and its baseline's from the same run (speed measured interleaved)."""

    baseline: Measurement | None = None
    skipprune_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    FILE = RESULTS_FILE

    @staticmethod
    def _upgrade_v1(data: dict) -> dict:
        return _results_v1(data)

    def save(self, path: Path) -> Path:
        return _save(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Results:
        path = Path(path)
        if not path.is_file():
            raise RecordError(f"{path}: no such results file; write one with `skipprune eval --json`")
        data = _read(path, "write it again with `skipprune eval --json`")
        other = _kind_of(data)
        if not isinstance(data, dict) or ("model" not in data and other):
            raise RecordError(
                f"{path} is not a results file{other}; write one with `skipprune eval EXPORT --json FILE`"
            )
        return cls.from_dict(data, str(path))


def _kind_of(data: Any) -> str:
    """', but what it is', for a JSON file of another kind skipprune writes; '' for anything else."""
    if isinstance(data, list) and data and isinstance(data[0], dict) and "kept_percent" in data[0]:
        return " but a sweep table (`skipprune sweep --json`)"
    if isinstance(data, dict):
        if data.get("kind") == PLAN_KIND:
            return " but a plan file (`skipprune search`)"
        if "angular_distance" in data and "layers" in data:
            return " but an importance table (`skipprune analyze --json`)"
        if "plan" in data and "verification" in data:
            return f" but an export's own record ({RECORD_FILE})"
        if "model" in data and "perplexity" in data:
            return " but a results file (`skipprune eval --json`)"
    return ""


_V1_LATENCY = re.compile(r"one_token_s_batch(\d+)_len(\d+)")


def _results_v1(data: dict) -> dict:
    """Version 1 encoded speed entries in key names (`one_token_s_batch8_len50`)."""

    def measurement(d: dict) -> dict:
        d = dict(d)
        speed = d.get("speed")
        if isinstance(speed, dict):
            latency = [
                {"batch": int(m[1]), "prompt_tokens": int(m[2]), "seconds": v}
                for k, v in speed.items()
                if (m := _V1_LATENCY.fullmatch(k))
            ]
            rest = {k: v for k, v in speed.items() if not _V1_LATENCY.fullmatch(k)}
            d["speed"] = {**rest, "latency": latency} if rest or latency else None
        return d

    out = measurement(data)
    if isinstance(data.get("baseline"), dict):
        out["baseline"] = measurement(data["baseline"])
    return out


# -- encoding and checked decoding ---------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A record (or any value holding records) as plain JSON data."""
    if isinstance(value, PrunePlan):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(cls, data: Any, where: str):
    """A record of class `cls` from its JSON data (`encode`'s inverse), checked field by field."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise RecordError(
            f"{where} has schema version {version}, newer than this skipprune reads; pip install -U skipprune"
        )
    return _decode(cls, data, Path(where).name, where)


class _Bad(Exception):
    pass


def _decode(tp, value, path: str, where: str):
    try:
        return _value(tp, value, path)
    except _Bad as e:
        fix = "write the file again with skipprune (export, eval --json or search)"
        raise RecordError(f"{where}: {e}; {fix}") from None


def _value(tp, value, path: str):
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _value(options[0], value, path)
    if tp is Any:
        return value
    if tp is PrunePlan:
        return _plan(value, path)
    if dataclasses.is_dataclass(tp):
        return _fields(tp, value, path)
    if origin is list:
        (item,) = get_args(tp)
        _expect(isinstance(value, list), path, "a list", value)
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        _expect(isinstance(value, dict), path, "an object", value)
        args = get_args(tp)
        return {k: _value(args[1], v, f"{path}.{k}") for k, v in value.items()} if args else value
    if tp is bool:
        _expect(isinstance(value, bool), path, "true or false", value)
    elif tp is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), path, "a whole number", value)
    elif tp is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), path, "a number", value)
        return float(value)
    elif tp is str:
        _expect(isinstance(value, str), path, "a string", value)
    return value


def _expect(ok: bool, path: str, what: str, value) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise _Bad(f"{path} must be {what}, not {shown}")


def _fields(cls, data, path: str):
    _expect(isinstance(data, dict), path, "an object", data)
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("%s: ignoring unknown field(s) %s (written by a newer skipprune?)", path, ", ".join(unknown))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Bad(f"{path}.{f.name} is missing")
    return cls(**kwargs)


def _plan(data, path: str) -> PrunePlan:
    _expect(isinstance(data, dict), path, "an object", data)
    n = _value(int, data.get("source_num_layers"), f"{path}.source_num_layers")
    sets = [_value(list[int], data.get(k), f"{path}.{k}") for k in ("drop_attention", "drop_mlp")]
    if n < 1 or any(not 0 <= i < n for s in sets for i in s):
        raise _Bad(f"{path} names layers outside 0-{n - 1}")
    return PrunePlan(n, frozenset(sets[0]), frozenset(sets[1]))


def _read(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: unreadable ({str(e).splitlines()[0] or type(e).__name__}); {fix}") from None


def _save(path: Path, data: dict, flush: bool = True) -> Path:
    write_text_durably(path, json.dumps(data, indent=2) + "\n", flush)
    return path
