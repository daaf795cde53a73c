"""skipprune: physically delete attention sublayers, MLP sublayers or whole blocks from a Hugging Face causal
LM, and write a smaller checkpoint that loads with transformers and computes exactly what the original
computes with those parts bypassed.

The stages import one way: errors, remote <- prune <- families <- records <- formats <- cards <- export <- measure
<- heal <- demo / cli.
Progress is reported through the `skipprune` logger (the CLI prints it to stderr).
"""

from .cards.hub import push
from .errors import SkippruneError
from .export.gguf import to_gguf
from .export.pipeline import ExportResult, export
from .export.refresh import RefreshResult, refresh
from .heal import HealResult, heal
from .measure.evaluate import analyze, evaluate, sweep
from .measure.planning import SearchResult, search
from .prune.plan import PrunePlan
from .records import ExportRecord, PlanFile, Results
from .version import __version__

__all__ = [
    "ExportRecord",
    "ExportResult",
    "HealResult",
    "PlanFile",
    "PrunePlan",
    "RefreshResult",
    "Results",
    "SearchResult",
    "SkippruneError",
    "__version__",
    "analyze",
    "evaluate",
    "export",
    "heal",
    "push",
    "refresh",
    "search",
    "sweep",
    "to_gguf",
]
