"""The measuring entry points: evaluate() (eval, demo), analyze() and sweep(); all measure through
measure_loaded(), and every argument is checked before a model is loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..cards.card import NOISE_NOTE, fmt, noisy, ratio, score_rows
from ..errors import MeasureError, PlanError
from ..export import layout
from ..prune.family import Family
from ..prune.plan import PrunePlan
from ..prune.suggest import Importance
from ..records import Measurement, Results
from ..system import placement_options
from . import speed as speeds
from .importance import measure_importance
from .perplexity import perplexity
from .runner import Prepared, load_model, pick_device, placement, prepare, prepare_stock
from .sweep import SweepRow, run_sweep
from .tasks import check_tasks, run_tasks
from .text import calibration_note, check_text_arg, read_text, token_windows

log = logging.getLogger(__name__)


def measure_loaded(
    model,
    prepared: Prepared | None,
    windows=None,
    text_name: str | None = None,
    tasks: list[str] | None = None,
    limit: int | None = None,
    sizes: bool = True,
) -> Measurement:
    """Everything but speed about one loaded model: sizes, perplexity on `windows`, lm-eval `tasks`."""
    m = Measurement(model=prepared.label if prepared else "")
    if sizes:
        m.params = speeds.count_params(model)
        m.disk_bytes = speeds.disk_bytes(prepared.folder) if prepared else None
        m.kv_bytes_per_token = speeds.kv_bytes_per_token(model)
    if windows is not None:
        m.perplexity, m.perplexity_protocol = perplexity(model, windows, text_name)
    if tasks:
        m.tasks = run_tasks(model, prepared.tokenizer, tasks, limit)
    return m


def check_seq_len(seq_len: int | None, low: int = 2) -> None:
    if seq_len is not None and seq_len < low:
        raise MeasureError(f"--seq-len {seq_len} is too short: a window needs at least {low} tokens")


def evaluate(
    model: str,
    baseline: str | None = None,
    text: str | None = None,
    seq_len: int | None = None,
    speed: bool = True,
    device: str = "auto",
    trust_remote_code: bool = False,
    tasks: list[str] | None = None,
    limit: int | None = None,
    device_map: str | None = None,
    max_memory: str | dict | None = None,
) -> Results:
    """Measure `model` (and `baseline`, in the same run, speed interleaved): perplexity, sizes, KV cache,
    speed, lm-eval tasks. `device_map` / `max_memory` go to accelerate (see runner.load_model)."""
    tasks = tasks or []
    check_tasks(tasks)
    check_text_arg(text)
    check_seq_len(seq_len)
    device_map, max_memory = placement_options(device_map, max_memory)
    spread_out = device_map is not None
    prepared = [prepare(ref, device, trust_remote_code, spread=spread_out) for ref in (model, baseline) if ref]
    device = pick_device(device)
    if baseline and prepared[0].vocab_size != prepared[1].vocab_size:
        raise MeasureError(
            f"{model} and --baseline {baseline} have different vocabularies ({prepared[0].vocab_size} vs "
            f"{prepared[1].vocab_size} tokens), so their scores would not compare; use the model's source as baseline"
        )
    max_len = prepared[0].max_positions
    seq_len = seq_len or min(2048, max_len)
    if not 2 <= seq_len <= max_len:
        raise MeasureError(f"--seq-len {seq_len} must be between 2 and the model's maximum, {max_len}")
    content, name = read_text(text)
    windows = token_windows(prepared[0].tokenizer, content, seq_len, vocab_size=prepared[0].vocab_size)
    loaded = [load_model(p, device, device_map, max_memory) for p in prepared]
    measured = []
    for m, p in zip(loaded, prepared):
        log.info("measuring %s: perplexity over %d windows of %d tokens ...", p.label, len(windows), seq_len)
        measured.append(measure_loaded(m, p, windows, name, tasks, limit))
    if speed and not _timed_from_disk(loaded):
        log.info("measuring 1-token latency and decode speed%s", " (interleaved with the baseline)" if baseline else "")
        for d, s in zip(measured, speeds.speed(loaded)):
            d.speed = s
    return Results(**vars(measured[0]), baseline=measured[1] if baseline else None)


def table(results: Results) -> str:
    """A readable before/after table for stdout."""
    base = results.baseline is not None
    lines = [f"{'':44}{'model':>16}" + (f"{'baseline':>16}{'ratio':>9}" if base else "")]
    rows = score_rows(results)
    for label, before, after, kind, noise in rows:
        line = f"{label:44}{fmt(after, kind):>16}"
        if base:
            line += f"{fmt(before, kind):>16}{ratio(before, after, noise):>9}"
        lines.append(line)
    if base and any(noisy(before, after, noise) for _, before, after, _, noise in rows):
        lines.append(NOISE_NOTE)
    return "\n".join(lines)


@dataclass
class Analysis:
    importance: Importance
    block_params: int  # parameters of one decoder block
    total_params: int
    family: Family | None = None
    config: dict | None = None  # the model's config.json

    def refusal(self, plan: PrunePlan) -> str | None:
        """Why an export of `plan` would be refused (a hybrid that must keep an attention layer, blocks whose
        kind follows from their position), or None."""
        if self.family is None:
            return None
        try:
            self.family.check(plan)
            layout.check_renumbering(layout.with_layer_types(self.config), plan, self.family)
        except PlanError as e:
            return str(e)
        return None


def analyze(
    model: str,
    text: str | None = None,
    samples: int = 32,
    seq_len: int = 256,
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | dict | None = None,
) -> Analysis:
    """Per-layer importance of a stock model on `samples` windows of calibration text."""
    placement = (device_map, max_memory)
    prepared, family, windows, _, loaded = _stock_on_windows(
        model, text, samples, seq_len, device, trust_remote_code, placement
    )
    layers = family.layers(loaded)
    if note := calibration_note(text):
        log.info(note)
    log.info("measuring %d windows of %d tokens through %d layers ...", len(windows), seq_len, len(layers))
    block = sum(p.numel() for p in layers[0].parameters())
    importance = measure_importance(loaded, family, windows)
    return Analysis(importance, block, speeds.count_params(loaded), family, prepared.config)


def sweep(
    model: str,
    text: str | None = None,
    seq_len: int = 256,
    samples: int = 32,
    tasks: list[str] | None = None,
    limit: int | None = None,
    speed: bool = True,
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | dict | None = None,
) -> list[SweepRow]:
    """The seed paper's grid on a stock model, in memory, on `samples` windows of `text`."""
    tasks = tasks or []
    check_tasks(tasks)
    placement = (device_map, max_memory)
    prepared, family, windows, name, loaded = _stock_on_windows(
        model, text, samples, seq_len, device, trust_remote_code, placement
    )

    def measure_point(m):
        r = measure_loaded(m, prepared, windows, name, tasks, limit, sizes=False)
        return r.perplexity, r.perplexity_protocol, {t: s.value for t, s in r.tasks.items()}

    log.info("sweeping the grid (%d windows of %d tokens per point) ...", len(windows), seq_len)
    return run_sweep(loaded, family, measure_point, speed and not _timed_from_disk([loaded]))


def _timed_from_disk(models: list) -> bool:
    """Whether speed would time the disk: a model whose weights are read from disk at every forward. Then
    speed is left out (and says so) rather than measured for hours and reported as the model's."""
    on_disk = [m for m in models if "disk" in placement(m)]
    if on_disk:
        log.info("speed not measured: the weights are read from disk at every forward, so it would time the disk")
    return bool(on_disk)


def _stock_on_windows(model: str, text, samples: int, seq_len: int, device: str, trust_remote_code: bool, placement):
    """What analyze and sweep start from: (prepared, family, windows, text name, loaded model); `placement` is
    (device_map, max_memory) for accelerate."""
    device_map, max_memory = placement_options(*placement)
    check_text_arg(text)
    check_seq_len(seq_len)
    prepared, family = prepare_stock(model, device, trust_remote_code, spread=device_map is not None)
    content, name = read_text(text)
    windows = token_windows(prepared.tokenizer, content, seq_len, samples, vocab_size=prepared.vocab_size)
    return prepared, family, windows, name, load_model(prepared, pick_device(device), device_map, max_memory)
