"""Settings of input-adaptive FFN skipping (FFN-SkipLLM, Jaiswal et al. 2024) as written into an export's
config.json. The exported configuration file checks the same keys (it cannot import skipprune)."""

from __future__ import annotations

import math

from ..errors import PlanError

DEFAULTS = {"cold_start": 2, "cold_end": 2, "sim_threshold": 0.99, "warmup_tokens": 5, "max_skips": 2}
_MINIMUM = {"cold_start": 0, "cold_end": 0, "warmup_tokens": 0, "max_skips": 1}


def parse_adaptive(text: str | dict | None) -> dict | None:
    """'default', 'key=value,...' (unspecified keys take DEFAULTS) or a settings dict -> checked settings."""
    if text is None:
        return None
    if isinstance(text, dict):
        unknown = set(text) - set(DEFAULTS)
        if unknown:
            raise PlanError(f"unknown adaptive FFN setting {sorted(unknown)[0]!r}: use {', '.join(DEFAULTS)}")
        return _checked({**DEFAULTS, **text})
    settings = dict(DEFAULTS)
    for item in [] if text.strip() in ("", "default") else text.split(","):
        key, _, value = item.strip().partition("=")
        if key not in settings or not value:
            raise PlanError(f"bad --adaptive-ffn item {item!r}: use key=value with keys {', '.join(settings)}")
        try:
            settings[key] = float(value) if key == "sim_threshold" else int(value)
        except ValueError:
            raise PlanError(f"bad --adaptive-ffn value {item!r}: {key} takes a number") from None
    return _checked(settings)


def _checked(settings: dict) -> dict:
    for key, low in _MINIMUM.items():
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PlanError(f"bad --adaptive-ffn value {key}={value!r}: it takes a whole number >= {low}")
    threshold = settings["sim_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise PlanError(f"bad --adaptive-ffn value sim_threshold={threshold!r}: it takes a finite number (a cosine)")
    return {**settings, "sim_threshold": float(threshold)}


def check_layers(settings: dict | None, num_layers: int) -> None:
    """Cold regions must leave at least one layer whose FFN may be skipped."""
    if settings and settings["cold_start"] + settings["cold_end"] >= num_layers:
        raise PlanError(
            f"--adaptive-ffn cold_start={settings['cold_start']} and cold_end={settings['cold_end']} cover all "
            f"{num_layers} output layers, so no FFN could ever be skipped; lower them"
        )
