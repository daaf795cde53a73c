"""Work an export hands to a child process, to run while it copies the shards of a large model.

- `logits`: the streamed logit check (verify.LogitCheck), both forwards side by side with the copy: the bypassed
  source's at once (reading the source as the copy does), the export's with each weight read as soon as the
  export has written and compared it (the parent names each tensor as it goes); the comparison is answered once
  the parent's own checks have passed.
- `figures`: the model card's figures, so that importing matplotlib costs no wall time.

Each child starts before its job is known and imports what its task needs meanwhile (`Sidecar(task)`, then
`start(job)`). A child process, not a thread: a thread busy in torch can hold the interpreter at exit (seen
under SIGTERM), a child is killed on every way out of the export, and with its parent if that is killed
outright (Linux's PR_SET_PDEATHSIG). Messages are JSON lines: the job on the child's stdin, then its answer on stdout; a
skipprune error in the child comes back as the same one-line error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .. import errors
from ..errors import VerificationError, describe

# Below this many bytes of source the copy takes well under the child's start-up (importing matplotlib
# again), and the figures are drawn in the export's own process.
OVERLAP_BYTES = 1 << 30
# The logit check's child pays off once the source is too large for the copy to come from the page cache
# alone: below that the copy is too short to hide anything behind (README: Benchmarks, export speed).
LOGITS_OVERLAP_BYTES = 4 << 30


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own clean-up still kills it
        pass


class Sidecar:
    """One task in a child process: `start(job)`, `send()` messages to it, `result()` waits for its answer."""

    def __init__(self, task: str):
        env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        # This skipprune, wherever it was imported from (an installed copy elsewhere would answer otherwise).
        here = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        self.task = task
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from skipprune.export.sidecar import main; main(sys.argv[1])", task],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the export, which stops this process
            preexec_fn=_die_with_parent,
        )

    def start(self, job: dict) -> None:
        """Its job: the child has been importing what the task needs until now."""
        self.send(job)

    def send(self, message) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it has ended already: result() says how
            pass

    def result(self):
        line = self.proc.stdout.readline()
        status = self.proc.wait()
        if not line:
            raise VerificationError(
                f"the export's {self.task} process ended without an answer (exit status {status}); "
                "rerun the export, and report this if it happens again"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise getattr(errors, answer["error"], VerificationError)(answer["message"])
        return answer["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Inbox:
    """What the export tells this process while it writes: each tensor written and checked (its name), then
    True (all written and checked: finish) or False (stop). Read in a thread, waited on by the others."""

    def __init__(self):
        import threading

        self.written: set[str] = set()
        self.go: bool | None = None
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            message = json.loads(line)
            with self.cond:
                if isinstance(message, dict):
                    self.written.add(message["written"])
                else:
                    self.go = bool(message)
                self.cond.notify_all()
        with self.cond:  # the export has gone
            self.go = bool(self.go)
            self.cond.notify_all()

    def wait(self, name: str | None) -> None:
        """Until tensor `name` (None: every tensor) is written; exits when the export has stopped."""
        with self.cond:
            self.cond.wait_for(lambda: name in self.written or self.go is not None)
        if name not in self.written and not self.go:
            os._exit(0)  # the export stopped: nothing to answer, and no thread to wait for

    def started(self) -> None:
        """Until the first tensor is written: every shard's header and the index are there by then."""
        with self.cond:
            self.cond.wait_for(lambda: self.written or self.go is not None)

    def finish(self) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.go is not None)
        return self.go


def _logits(job: dict) -> dict | None:
    """Both halves at once, in two threads: the bypassed source's logits, and the export's, each of its weights
    read as soon as the export has written it."""
    import threading

    from ..families import family_of
    from ..prune.plan import PrunePlan
    from .source import open_source
    from .verify import LogitCheck

    inbox = _Inbox()
    src = replace(open_source(job["path"]), id=job["id"], revision=job["revision"])
    family = family_of(src.config, split=job["split"])
    with LogitCheck(src, PrunePlan.from_dict(job["plan"]), family, job["dtype"], streamed=True) as check:
        # Loaded one after the other (loading sets torch's default dtype for the whole process), run side by side.
        source = check.load_reference()
        inbox.started()
        export_model = check.load_export(Path(job["folder"]), inbox.wait)
        export: dict = {}

        def run_export() -> None:
            try:
                export["logits"] = check.run_export(export_model)
            except BaseException as e:  # raised in the main thread
                export["error"] = e

        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))  # two forwards share the cores
        thread = threading.Thread(target=run_export, daemon=True)
        thread.start()
        check.run_reference(source)
        thread.join()
        if "error" in export:
            raise export["error"]
        return asdict(check.compare(export["logits"])) if inbox.finish() else None


def _figures(job: dict) -> None:
    from ..cards.card import draw_figures
    from ..prune.plan import PrunePlan
    from ..records import PlanSearch, decode

    search = decode(PlanSearch, job["search"], "the plan's search") if job["search"] else None
    draw_figures(Path(job["folder"]), PrunePlan.from_dict(job["plan"]), search, job["name"])


def _prepare(task: str) -> None:
    """What the task needs imported, done while the export checks its source and before the job comes."""
    if task == "figures":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    else:
        from transformers import AutoModelForCausalLM  # noqa: F401  (torch and transformers, the slow part)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(task: str) -> None:
    """The child's side: one job from stdin, one answer on stdout; warnings the export shows itself are left out."""
    import logging

    logging.getLogger("accelerate").setLevel(logging.ERROR)
    with contextlib.suppress(Exception):  # a failure here comes back from the task itself, in one line
        _prepare(task)
    line = sys.stdin.readline()
    if not line:  # not needed after all
        return
    job = json.loads(line)
    try:
        answer = {"result": {"logits": _logits, "figures": _figures}[task](job)}
    except errors.SkippruneError as e:
        answer = {"error": type(e).__name__, "message": str(e)}
    except Exception as e:
        answer = {
            "error": "VerificationError",
            "message": f"the export's {task} process failed ({describe(e)}); please report this",
        }
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
