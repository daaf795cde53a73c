"""skipprune: physically delete attention sublayers, MLP sublayers or whole blocks from a Hugging Face
causal LM, and write a smaller checkpoint that loads with transformers and computes exactly what the
original computes with those parts bypassed."""

__version__ = "0.1.0"

from .errors import SkippruneError  # noqa: E402
from .export.pipeline import ExportResult, export  # noqa: E402
from .prune.families import FAMILIES  # noqa: E402
from .prune.plan import PrunePlan  # noqa: E402

__all__ = ["FAMILIES", "ExportResult", "PrunePlan", "SkippruneError", "export", "__version__"]
