"""Layer-major execution: run a causal LM over many windows one decoder block at a time.

A token-major forward (window after window through the whole model) reads every weight once per window; a
model whose weights stay on disk (accelerate's offload, see runner.load_model) would then be read from disk
once per window. Here each block runs over every window while its weights are held, so every weight is
read once per measurement and memory holds one block's weights plus the hidden states of all windows.

How, without knowing the family's forward: the model's own forward runs with every block replaced by a
stand-in. A recording pass keeps what the model hands each block for each window (hidden states, masks,
position embeddings: whatever its forward computes); then each real block runs on those inputs for every
window; a last pass hands the final hidden states to the model's own tail (norm, head, logit scaling or
soft-capping). The arithmetic of each block is the stock one on the same inputs, so the logits equal a plain
forward bit for bit (tests/test_all_families.py checks this for every family of the matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

from tqdm.auto import tqdm

from ..families.discover import locate_blocks
from ..system import return_freed_memory


class _Stop(Exception):
    """Ends a recording pass once the last block's inputs are kept."""


def _stand_in_class():
    import torch

    class StandIn(torch.nn.Module):
        """Sits in a block's slot: does `act(args, kwargs)` and answers attribute look-ups (e.g. the
        `attention_type` some forwards read off each block) as the block would."""

        def __init__(self, block, act):
            super().__init__()
            self.__dict__["block"] = block  # not registered: its weights are not the stand-in's
            self.act = act

        def forward(self, *args, **kwargs):
            return self.act(args, kwargs)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.__dict__["block"], name)

    return StandIn


def blocks_of(model):
    """The decoder blocks of a loaded causal LM (stock, multimodal or a skipprune export)."""
    return locate_blocks(model)[1]


def offloaded(model) -> bool:
    """Whether accelerate keeps some of `model`'s weights off the execution device until a module runs."""
    return any(_offload_hooks(model))


def _offload_hooks(module) -> Iterator[tuple[object, object]]:
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            if getattr(h, "offload", False) or getattr(h, "_skipprune_held", False):
                yield m, h


@contextmanager
def held(module, own_only: bool = False):
    """Within the block, the weights accelerate offloads from `module` (and its children, unless `own_only`)
    stay on the execution device, read once, instead of being read at every call and dropped after it.
    A no-op for weights that are loaded anyway."""
    hooks = [(m, h) for m, h in _offload_hooks(module) if h.offload and (m is module or not own_only)]
    try:
        for m, h in hooks:
            h.pre_forward(m)
            h.offload, h._skipprune_held = False, True
        yield module
    finally:
        for m, h in hooks:
            h.offload, h._skipprune_held = True, False
            h.post_forward(m, None)
        if hooks:
            return_freed_memory()


def block_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def with_block_input(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class LayerMajor:
    """One layer-major pass of `model` over `batches` (token-id tensors). `run(observe)`: `observe(i, b, x, y)`
    sees block i's input and output for batch b as they are computed; `logits(each)` then hands over each
    batch's logits (callbacks, not generators: a generator left suspended would hold torch.no_grad open)."""

    def __init__(self, model, batches: list, desc: str = "blocks"):
        self.model, self.batches, self.desc = model, list(batches), desc
        self.blocks = blocks_of(model)
        self.final: list = []

    def _forward(self, ids):
        return self.model(input_ids=ids, use_cache=False)

    @contextmanager
    def _standing(self, acts: list[Callable]):
        StandIn = _stand_in_class()
        originals = list(self.blocks)
        for i, act in enumerate(acts):
            self.blocks[i] = StandIn(originals[i], act)
        try:
            yield originals
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block

    @contextmanager
    def head_held(self):
        """The weights outside the blocks (embeddings, final norm, head), held for a whole pass."""
        inside = {id(m) for block in self.blocks for m in block.modules()}
        with ExitStack() as stack:
            for m in self.model.modules():
                if id(m) not in inside:
                    stack.enter_context(held(m, own_only=True))
            yield

    def _output_form(self, first_inputs) -> Callable:
        """How a block hands back its hidden states (a tensor, or a tuple led by them), seen by running block 0
        once: stand-ins must answer in the same form."""
        args, kwargs = first_inputs
        out = self.blocks[0](*args, **kwargs)
        if isinstance(out, tuple):
            rest = (None,) * (len(out) - 1)
            return lambda h: (h, *rest)
        return lambda h: h

    def record(self, first: ExitStack) -> list[list]:
        """What the model hands each block for each batch: `inputs[i][b] = (args, kwargs)`, the hidden states in
        them being block 0's input for every i (only the other inputs are meant to be read from i > 0). Block 0
        runs once here to learn the form of a block's output, and stays held in `first`."""
        n = len(self.blocks)
        inputs: list[list] = [[None] * len(self.batches) for _ in range(n)]

        def record(i, b, form):
            def act(args, kwargs):
                inputs[i][b] = (args, kwargs)
                if i == n - 1 or form is None:
                    raise _Stop
                return form(block_input(args, kwargs))

            return act

        with self.head_held():
            with self._standing([record(0, 0, None)]), suppress(_Stop):
                self._forward(self.batches[0])
            first.enter_context(held(self.blocks[0]))
            form = self.form = self._output_form(inputs[0][0])
            for b, ids in enumerate(self.batches):
                with self._standing([record(i, b, form) for i in range(n)]), suppress(_Stop):
                    self._forward(ids)
        return inputs

    def run(self, observe: Callable | None = None) -> None:
        import torch

        n = len(self.blocks)
        first = ExitStack()  # block 0 runs once to learn the output form, then again for every batch
        with torch.no_grad(), first:
            inputs = self.record(first)
            hidden = [block_input(*inputs[0][b]) for b in range(len(self.batches))]
            with tqdm(total=n, desc=self.desc, unit="block", disable=None, leave=False) as bar:
                for i, block in enumerate(self.blocks):
                    with held(block):  # (block 0: held already)
                        for b in range(len(self.batches)):
                            args, kwargs = with_block_input(*inputs[i][b], hidden[b])
                            out = block(*args, **kwargs)
                            y = out[0] if isinstance(out, tuple) else out
                            if observe:
                                observe(i, b, hidden[b], y)
                            hidden[b] = y
                    if i == 0:
                        first.close()
                    inputs[i] = None  # this block's recorded inputs are spent
                    bar.update(1)
        self.final = hidden

    def tail(self, b: int, final):
        """Batch b's logits from the model's own tail (norm, head, logit scaling) on its final hidden states
        `final`; call inside `torch.no_grad()` and `head_held()`."""
        n, form = len(self.blocks), self.form
        acts = [lambda a, k: form(final)] + [lambda a, k: form(block_input(a, k))] * (n - 1)
        with self._standing(acts):
            return self._forward(self.batches[b]).logits

    def logits(self, each: Callable) -> None:
        """`each(b, logits)` for every batch, from the model's own tail on the final hidden states."""
        import torch

        with torch.no_grad(), self.head_held():
            for b in range(len(self.batches)):
                each(b, self.tail(b, self.final[b]))
