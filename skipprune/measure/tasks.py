"""Benchmarks through lm-evaluation-harness (the optional `lm-eval` extra), with the model passed in memory.

Open LLM Leaderboard v1 settings (used by Tyukin et al. 2024) are available by name; a path to a task YAML
runs a local task (the test suite ships one, so nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MeasureError
from ..records import TaskScore
from .runner import input_device

# name -> (few-shot count, metric reported)
OPEN_LLM_V1 = {
    "arc_challenge": (25, "acc_norm"),
    "hellaswag": (10, "acc_norm"),
    "mmlu": (5, "acc"),
    "truthfulqa_mc2": (0, "acc"),
}


def check_available() -> None:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError:
        raise MeasureError("--tasks needs lm-evaluation-harness: pip install 'skipprune[lm-eval]'") from None


def check_tasks(tasks: list[str]) -> None:
    """Fail on a missing lm-eval install or a missing task file before any model is loaded."""
    if not tasks:
        return
    check_available()
    for t in tasks:
        if t.endswith((".yaml", ".yml")):
            if not Path(t).is_file():
                raise MeasureError(f"task file {t} not found; pass a task YAML path or one of {', '.join(OPEN_LLM_V1)}")
            _task_name(Path(t))


def run_tasks(model, tokenizer, tasks: list[str], limit: int | None = None) -> dict[str, TaskScore]:
    """lm-eval scores of an in-memory model, one per task."""
    check_tasks(tasks)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    local = {t: Path(t) for t in tasks if t.endswith((".yaml", ".yml"))}
    include = sorted({str(p.resolve().parent) for p in local.values()})
    manager = TaskManager(include_path=include or None, include_defaults=not local or len(local) < len(tasks))
    out = {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    # lm-eval takes a passed-in model's device from its first weight, which accelerate's offload leaves on the
    # meta device; inputs belong where the embedding runs.
    lm._device = input_device(model)
    for task in tasks:
        name = _task_name(local[task]) if task in local else task
        shots, metric = OPEN_LLM_V1.get(name, (None, None))
        try:
            res = simple_evaluate(model=lm, tasks=[name], num_fewshot=shots, limit=limit, task_manager=manager)
        except (KeyError, ValueError) as e:
            raise MeasureError(
                f"unknown or broken task {task!r} ({e}); use a task YAML or one of {', '.join(OPEN_LLM_V1)}"
            ) from None
        scores = res["results"][name]
        metric = metric or next(k.split(",")[0] for k in scores if k.endswith(",none") and "stderr" not in k)
        stderr = scores.get(f"{metric}_stderr,none")
        out[name] = TaskScore(
            value=float(scores[f"{metric},none"]),
            metric=metric,
            num_fewshot=shots or 0,
            stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
            limit=limit,
            local=task in local,
        )
    return out


def _task_name(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("task:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    raise MeasureError(f"{path} has no 'task:' name; add one")
