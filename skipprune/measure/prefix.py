"""The plan search's objective, measured with prefix reuse: a candidate removal at layer l changes nothing below
l, so the hidden states entering block l under the current plan are kept (for every layer, every batch of
calibration windows) and only blocks l..L-1 and the model's tail run again.

Objectives, mean per token over the calibration windows:
- `kl` (default): KL(source || pruned) of the next-token distribution at every position, in nats; the
  source's log-probabilities are computed once;
- `perplexity`: the next-token negative log-likelihood (the log of perplexity; reported as perplexity).
Each token's term is non-negative (KL clamped at 0 against rounding), so a partial sum is a lower bound of the
whole: a candidate is abandoned as soon as it exceeds the bound the search gives, which changes no choice.
A plan's value depends on the plan alone, so every batch's term is kept once measured: a plan screened on
the first windows, or abandoned part-way, is later measured from where it stopped (the running sum adds the
same terms in the same order, so the value is the same to the last bit), and a plan measured before costs
nothing.

Blocks run on the inputs the model's own forward hands them (recorded once, stream.LayerMajor), so the
numbers equal full forwards of the model with the same sublayers removed, bit for bit (tested). Weights
that accelerate keeps on disk are read once per candidate: each block runs over all batches while held.
"""

from __future__ import annotations

from contextlib import ExitStack

from ..prune.bypass import removed_in_place
from ..prune.family import Family
from ..prune.plan import PrunePlan
from .runner import input_device
from .stream import LayerMajor, block_input, held, offloaded, with_block_input

OBJECTIVES = ("kl", "perplexity")


def _batch_bounds(n: int, largest: int) -> list[tuple[int, int]]:
    """Batches of 1, 1, 2, 4, ... windows up to `largest`: a candidate that cannot win is usually ruled out by
    the first window alone, while the later, larger batches run at full matmul speed."""
    bounds, start, size = [], 0, 1
    while start < n:
        bounds.append((start, min(n, start + size)))
        start += size
        if len(bounds) > 1:
            size = min(largest, size * 2)
    return bounds


class PrefixObjective:
    """Use as a context manager (it holds torch.no_grad and, with offloaded weights, the embeddings and head)."""

    def __init__(self, model, family: Family, windows, objective: str = "kl", batch_windows: int = 4):
        self.model, self.family, self.kind = model, family, objective
        device = input_device(model)
        self.batches = [windows[a:b].to(device) for a, b in _batch_bounds(len(windows), batch_windows)]
        self.runner = LayerMajor(model, self.batches, desc="search")
        self.blocks = self.runner.blocks
        self.n = len(self.blocks)
        self.layer_major = offloaded(model)
        n_tokens = sum(b.numel() for b in self.batches)
        self.count = n_tokens if objective == "kl" else n_tokens - len(windows)
        self.windows = len(windows)
        self.block_runs = self.tail_runs = 0  # windows through one block / through the tail
        self.terms: dict[PrunePlan, list[float]] = {}  # each plan's per-batch terms measured so far
        self._stack = ExitStack()

    def __enter__(self):
        import torch

        self._stack.enter_context(torch.no_grad())
        first = ExitStack()
        with first:
            self.inputs = self.runner.record(first)
        self._stack.enter_context(self.runner.head_held())
        # states[l][b]: the hidden states entering block l (l = n: leaving the last block), current plan
        self.states: list[list] = [[block_input(*self.inputs[0][b]) for b in range(len(self.batches))]]
        self.states += [[None] * len(self.batches) for _ in range(self.n)]
        self.plan = PrunePlan(self.n)
        self._propagate(self.plan, 0)
        self.reference = [self._reference(b) for b in range(len(self.batches))]
        return self

    def __exit__(self, *exc):
        self._stack.close()

    # -- the Objective protocol (skipprune.prune.search) ------------------------------------------------

    def value(
        self, plan: PrunePlan, start: int, bound: float | None = None, batches: int | None = None
    ) -> float | None:
        """The objective of `plan` over every window, or (screening) over the first `batches` batches only."""
        count = len(self.batches) if batches is None else min(batches, len(self.batches))
        tokens = self.count if batches is None else self._tokens(count)
        terms = self.terms.setdefault(plan, [])
        total = 0.0
        for term in terms[:count]:
            total += term
        if bound is not None and total / tokens > bound:
            return None
        if len(terms) >= count:
            return total / tokens
        left = range(len(terms), count)
        groups = [left] if self.layer_major else [[b] for b in left]
        with removed_in_place(self.model, plan, self.family):
            for group in groups:
                hidden = {b: self.states[start][b] for b in group}
                self._run_blocks(plan, start, hidden)
                for b in group:
                    terms.append(self._term(b, self._tail(b, hidden[b])))
                    total += terms[-1]
                if bound is not None and total / tokens > bound:
                    return None
        return total / tokens

    def _tokens(self, count: int) -> int:
        batches = self.batches[:count]
        return sum(b.numel() - (0 if self.kind == "kl" else b.shape[0]) for b in batches)

    def commit(self, plan: PrunePlan, start: int) -> None:
        self.plan = plan
        with removed_in_place(self.model, plan, self.family):
            self._propagate(plan, start)

    # -- running blocks -----------------------------------------------------------------------------------

    def _run_blocks(self, plan: PrunePlan, start: int, hidden: dict, keep: bool = False) -> None:
        gone = set(plan.dropped_blocks)
        for j in range(start, self.n):
            if j not in gone:  # a removed block hands its input on unchanged
                with held(self.blocks[j]):
                    for b in hidden:
                        args, kwargs = with_block_input(*self.inputs[j][b], hidden[b])
                        out = self.blocks[j](*args, **kwargs)
                        hidden[b] = out[0] if isinstance(out, tuple) else out
                        self.block_runs += len(self.batches[b])
            if keep:
                for b in hidden:
                    self.states[j + 1][b] = hidden[b]

    def _propagate(self, plan: PrunePlan, start: int) -> None:
        self._run_blocks(plan, start, {b: self.states[start][b] for b in range(len(self.batches))}, keep=True)

    def _tail(self, b: int, final):
        self.tail_runs += len(self.batches[b])
        return self.runner.tail(b, final).float()

    def forward_equivalents(self, block_params: float, head_params: float) -> float:
        """The work done so far, in full forwards over the calibration windows, weighting blocks and the head
        (logits at every position) by their weights."""
        work = self.block_runs * block_params + self.tail_runs * head_params
        return work / (self.windows * (self.n * block_params + head_params))

    def final_logits(self, b: int):
        """The current plan's logits for batch b (tests compare them with full forwards)."""
        return self._tail(b, self.states[self.n][b])

    # -- per-token terms ----------------------------------------------------------------------------------

    def _reference(self, b: int):
        """The source's next-token log-probabilities for batch b (kl only)."""
        import torch

        if self.kind != "kl":
            return None
        return torch.log_softmax(self._tail(b, self.states[self.n][b]), dim=-1)

    def _term(self, b: int, logits) -> float:
        import torch

        if self.kind == "kl":
            logp = self.reference[b]
            # p·(log p - log q) term by term: entropy minus cross-entropy would cancel to a few digits. In place
            # (-log q + log p is log p - log q exactly), which saves a quarter of this, a tenth of a late candidate.
            kl = torch.log_softmax(logits, dim=-1).neg_().add_(logp).mul_(logp.exp()).sum(-1)
            return kl.clamp_min(0).sum().item()
        ids = self.batches[b]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1).to(logits.device), reduction="sum"
        ).item()
