"""Checks of a source before anything is written, and of a written export against its plan and its source.

- Source (every export, before writing): the stock model built on the meta device from the source's own
  config expects exactly the tensors the shards hold, with those shapes; layers beyond `num_hidden_layers`,
  missing tensors and contradicting shapes are the source's problems and are reported as such.
- Structure (every export): the shard headers hold exactly the planned names, shapes and dtypes, and every
  kept tensor's bytes equal the source's, compared byte for byte (stronger than comparing hashes, and at
  memory speed); the output model built on the meta device from the written config expects exactly those
  tensors with those shapes.
- Numerics (when asked, or when the models fit in memory): the logits of the loaded export equal those of the
  source model with the same sublayers bypassed.
"""

from __future__ import annotations

import math
import mmap
import os
import queue
import re
import threading
from pathlib import Path

import numpy as np

from ..errors import SourceError, VerificationError, translated
from ..families.config import text_config
from ..families.discover import checkpoint_names
from ..prune.family import Family
from ..prune.plan import PrunePlan
from ..records import NumericCheck, StructureCheck
from ..system import block_progress
from .offload import streaming_map
from .source import Source, index_tensors
from .writer import OutTensor, convert_bytes

_CHUNK = 16 << 20
_REPORT = "please report this"


def expected_tensors(folder: Path, label: str, output: bool = False, model_naming: bool = False) -> dict[str, tuple]:
    """name -> shape of the weights the model `folder`'s config describes stores (tied copies are not stored),
    built on the meta device: no memory, no weights read; under checkpoint names unless `model_naming`. A
    source's config never runs remote code; an output's code is skipprune's own, written moments ago, and a
    failure there is skipprune's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, fix = (VerificationError, _REPORT) if output else (SourceError, "fix config.json or restore it")
    with translated(kind, f"building the model that {label}'s config describes", fix):
        config = AutoConfig.from_pretrained(folder, trust_remote_code=output)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=output)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    state = {name: t for name, t in model.state_dict().items() if name not in tied}
    named = state if model_naming else checkpoint_names(model, state)
    return {name: tuple(t.shape) for name, t in named.items()}


def check_source(src: Source, family: Family) -> list[str]:
    """Refuse a source whose shards contradict its config; return the tensors its model never reads (legacy
    buffers such as `rotary_emb.inv_freq`), which transformers ignores on load and the export leaves out."""
    shapes = expected_tensors(src.path, src.label)
    layer = re.compile(re.escape(family.layers_prefix) + r"(\d+)\.")
    stored_layers = {int(m[1]) for name in src.tensors if (m := layer.match(name))}
    n = src.num_layers
    if stored_layers and max(stored_layers) >= n:
        raise SourceError(
            f"{src.label}: config.json says num_hidden_layers={n} but the shards hold layers up to "
            f"{max(stored_layers)}; set num_hidden_layers to {max(stored_layers) + 1} if the weights are right"
        )
    missing = sorted(set(shapes) - set(src.tensors))
    if missing:
        if stored_layers and max(stored_layers) < n - 1 and all(layer.match(m) for m in missing):
            raise SourceError(
                f"{src.label}: config.json says num_hidden_layers={n} but the shards hold only "
                f"{max(stored_layers) + 1} layers; fix num_hidden_layers or download the missing shards"
            )
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SourceError(
            f"{src.label}: tensor {missing[0]}{more} is missing from the shards but the model needs it; "
            "the checkpoint is incomplete: download it again"
        )
    for name, shape in shapes.items():
        if name in src.tensors and src.tensors[name].shape != shape:
            raise SourceError(
                f"{src.label}: tensor {name} has shape {list(src.tensors[name].shape)} in the shards but config.json "
                f"implies {list(shape)}; config.json does not match the weights"
            )
    return sorted(set(src.tensors) - set(shapes))


class ByteCheck:
    """Compares each tensor's written bytes with the source's as soon as it is written (`write_shards(check=)`),
    while both are still in the page cache: the copy reads each source byte once for both. Keeps where it
    found each tensor, for `verify_structure` to check against the shard headers.

    `behind=True`: the comparisons run in a thread at most `_LAG` tensors behind the copy, which meanwhile
    mostly waits for the disk to take its writes; a difference is raised by the next call, or by `finish()`,
    which waits for the last ones."""

    def __init__(self, changed: frozenset[str] = frozenset(), behind: bool = False):
        self.changed, self.fds, self.seen = changed, {}, {}
        self.error: BaseException | None = None
        self.closed = False
        self.queue = self.thread = None
        if behind:
            self.queue = queue.Queue(maxsize=_LAG)
            self.thread = threading.Thread(target=self._behind, daemon=True, name="skipprune-byte-check")
            self.thread.start()

    def __call__(self, t: OutTensor, written) -> None:
        if self.queue is None:
            self._compare(t, written)
            return
        self._raise()
        self.queue.put((t, written))

    def _compare(self, t: OutTensor, written) -> None:
        if t.name not in self.changed and not _same_bytes(self.fds, written, t):
            raise VerificationError(f"bytes of {t.name} differ from the source; the disk may be failing, export again")
        self.seen[t.name] = (Path(written.file), written.start)

    def _behind(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None and not self.closed:  # after a difference or close(): drained unread
                try:
                    self._compare(*item)
                except BaseException as e:  # raised in the copying thread
                    self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for the comparisons still queued; raise a difference found."""
        self._stop()
        self._raise()

    def _stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def close(self) -> None:
        """Stop comparing (what is queued is dropped) and close the files; raises nothing."""
        self.closed = True
        self._stop()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


_LAG = 4  # tensors the comparisons may fall behind the copy: their bytes are still in the page cache


def verify_structure(
    folder: Path, expected: list[OutTensor], changed: frozenset[str] = frozenset(), compared: ByteCheck | None = None
) -> StructureCheck:
    """The shards hold exactly the `expected` names, shapes and dtypes, and their bytes are the sources' (all but
    the `changed` ones: weights a healing trained); bytes already `compared` as they were written are not
    read again, but must have been compared where the headers say they are."""
    written = index_tensors(folder)
    want = {t.name: t for t in expected}
    if set(written) != set(want):
        extra, missing = sorted(set(written) - set(want)), sorted(set(want) - set(written))
        raise VerificationError(f"export holds unexpected tensors {extra[:3]} / lacks {missing[:3]}; {_REPORT}")
    for name, info in written.items():
        if (info.dtype, info.shape) != (want[name].dtype, want[name].shape):
            raise VerificationError(f"tensor {name} was written as {info.dtype}{list(info.shape)}; {_REPORT}")
    check = compared or ByteCheck(changed)
    try:
        for name, info in sorted(written.items(), key=lambda kv: (kv[1].file, kv[1].start)):
            if compared is None:
                check(want[name], info)
            elif compared.seen.get(name) != (Path(info.file), info.start):
                raise VerificationError(f"tensor {name} was not compared where the shard header puts it; {_REPORT}")
    finally:
        if compared is None:
            check.close()
    converted = sorted({t.dtype for t in expected if t.source is not None and t.dtype != t.source.dtype})
    return StructureCheck(
        tensors=len(written),
        bytes_compared=sum(i.nbytes for n, i in written.items() if n not in changed),
        converted_to=_DTYPE_NAMES[converted[0]] if converted else None,
    )


def _same_bytes(fds: dict, info, t: OutTensor) -> bool:
    """Whether the tensor written at `info` holds `t`'s bytes: the source's, converted ones, or zeros."""
    if t.source is None:
        return not _window(fds, info, 0, info.nbytes).any()
    if t.dtype != t.source.dtype:
        return _window(fds, info, 0, info.nbytes).tobytes() == convert_bytes(t)
    return all(_same_chunk(fds, info, t.source, a) for a in range(0, info.nbytes, _CHUNK))


_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def check_model_expects(folder: Path, expected: list[OutTensor], model_naming: bool = False) -> None:
    """The output model, built on the meta device from the written config, expects exactly the tensors written,
    with their shapes (a tied lm_head is not stored)."""
    shapes = expected_tensors(folder, "the export", output=True, model_naming=model_naming)
    written = {t.name: t.shape for t in expected}
    unused = sorted(set(written) - set(shapes))
    lacking = sorted(set(shapes) - set(written))
    if unused or lacking:
        raise VerificationError(f"the exported model expects {lacking[:3]} and does not use {unused[:3]}; {_REPORT}")
    for name, shape in written.items():
        if shapes[name] != shape:
            raise VerificationError(
                f"the exported model expects {name} as {list(shapes[name])}, written {list(shape)}; {_REPORT}"
            )


def _same_chunk(fds: dict, out, src, a: int) -> bool:
    n = min(_CHUNK, out.nbytes - a)
    x, y = _window(fds, out, a, n), _window(fds, src, a, n)
    body = n - n % 8  # compare 8 bytes at a time, then the tail
    return (
        bool(np.array_equal(x[:body].view(np.uint64), y[:body].view(np.uint64)))
        and x[body:].tobytes() == y[body:].tobytes()
    )


def _window(fds: dict, info, a: int, n: int) -> np.ndarray:
    """Bytes a..a+n of a tensor as a read-only array over a private small mapping of the page cache: no
    copy into Python, and resident memory stays bounded by the window (unmapped when the array goes)."""
    if info.file not in fds:
        fds[info.file] = os.open(info.file, os.O_RDONLY)
    start = info.start + a
    base = start - start % mmap.ALLOCATIONGRANULARITY
    if n == 0:
        return np.empty(0, dtype=np.uint8)
    view = mmap.mmap(fds[info.file], start - base + n, offset=base, access=mmap.ACCESS_READ)
    return np.frombuffer(view, dtype=np.uint8, count=n, offset=start - base)


def verify_numerics(
    folder: Path,
    source: Source,
    plan: PrunePlan,
    family: Family,
    dtype: str = "auto",
    streamed: bool = False,
    tokens: int = 16,
    dispatch: tuple | None = None,
) -> NumericCheck:
    """Max |logit difference| between the export and the bypassed source, with a padded batch.

    In memory: both models in fp32; with a dtype conversion the reference is the source with its weights
    rounded to that dtype. Streamed (models that do not fit): both models are dispatched by accelerate with
    their weights left on disk (offload.streaming_map), each block's weights read from the safetensors files
    when it runs, and compared in the checkpoint's dtype (or the converted one); memory stays near one block's
    weights. One batch of two rows: token-major is already layer-major here, every weight is read once.
    `dispatch` = (device_map, max_memory): both models placed by accelerate as asked (GPUs, CPU, disk), in the
    checkpoint's dtype (or the converted one). The two halves (`LogitCheck`) can also run apart, in a child
    process while the shards are written (sidecar.py)."""
    with LogitCheck(source, plan, family, dtype, streamed, tokens, dispatch) as check:
        check.reference()
        return check.against(folder)


class LogitCheck:
    """The bypassed source's logits (`reference()`), then an export's against them (`against(folder)`)."""

    def __init__(self, source, plan, family, dtype="auto", streamed=False, tokens=16, dispatch=None):
        import tempfile

        import torch

        self.source, self.plan, self.family, self.dtype = source, plan, family, dtype
        self.streamed, self.dispatch = streamed, dispatch
        config = source.config
        vocab = int(config.get("vocab_size") or text_config(config).get("vocab_size"))
        self.ids = torch.randint(0, vocab, (2, tokens), generator=torch.Generator().manual_seed(0))
        self.mask = torch.ones_like(self.ids)
        self.mask[1, : tokens // 4] = 0  # left padding in the second row
        self.want = None
        self.folder = tempfile.TemporaryDirectory(prefix="skipprune-offload-")  # where accelerate may offload

    def __enter__(self) -> LogitCheck:
        return self

    def __exit__(self, *exc) -> None:
        self.folder.cleanup()

    def _load(self, path: Path, own_code: bool, offload: str) -> dict:
        import torch

        target = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        if self.dispatch:
            return {
                "dtype": target,
                "device_map": self.dispatch[0],
                "max_memory": self.dispatch[1],
                "offload_folder": offload,
            }
        if not self.streamed:
            return {"dtype": torch.float32}
        return {"dtype": target, "device_map": streaming_map(path, own_code), "offload_folder": offload}

    def _offload(self, name: str) -> str:
        folder = Path(self.folder.name) / name
        folder.mkdir(exist_ok=True)
        return str(folder)

    def reference(self) -> None:
        self.run_reference(self.load_reference())

    def load_reference(self):
        import torch
        from transformers import AutoModelForCausalLM

        path = self.source.path
        with translated(
            VerificationError, "loading the source for the logit check", f"rerun with --no-verify; {_REPORT}"
        ):
            model = AutoModelForCausalLM.from_pretrained(path, **self._load(path, False, self._offload("source")))
        if self.dtype != "auto" and not self.streamed and not self.dispatch:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(getattr(torch, self.dtype)))
        return model

    def run_reference(self, model) -> None:
        import torch

        from ..prune.bypass import bypassed

        family = self.family
        with torch.no_grad(), bypassed(model, self.plan, family), block_progress(family.layers(model), "source"):
            self.want = model(input_ids=self.ids, attention_mask=self.mask).logits.float()
        if not torch.isfinite(self.want[self.mask.bool()]).all():
            _blame_source_values(self.source)

    def against(self, folder: Path) -> NumericCheck:
        return self.compare(self.run_export(self.load_export(folder)))

    def load_export(self, folder: Path, wait=None):
        """The export as loaded for the check. With `wait(name)` (streamed only), loadable while its shards are
        still being written: each weight is read once `wait` returns for it (the tensor's name in the shards);
        `wait(None)` means "all of them"."""
        from transformers import AutoModelForCausalLM

        def load():
            with translated(VerificationError, "loading the export for the logit check", _REPORT):
                model, loading = AutoModelForCausalLM.from_pretrained(
                    folder, trust_remote_code=True, output_loading_info=True, **self._load(folder, True, offload)
                )
            if loading["missing_keys"]:
                missing = sorted(loading["missing_keys"])
                raise VerificationError(f"the export lacks {missing[:3]}, which its model needs; {_REPORT}")
            return model

        offload = self._offload("export")
        model = load()
        if wait is not None and not _read_when_written(model, wait):
            del model  # the load itself read weights (converted on load, or not offloaded): read them again
            wait(None)
            model = load()
        return model

    def run_export(self, model):
        import torch

        with torch.no_grad(), block_progress(self.family.layers(model), "export"):
            return model(input_ids=self.ids, attention_mask=self.mask).logits

    def compare(self, out) -> NumericCheck:
        real = self.mask.bool()
        diff = (out.float() - self.want)[real].abs().max().item()
        if not diff <= 1e-5:
            raise VerificationError(
                f"exported logits differ from the bypassed source by {diff:.3g} (> 1e-5); {_REPORT}"
            )
        if self.dispatch:
            mode = f"dispatched by accelerate ({self.dispatch[0]})"
        else:
            mode = "streamed from disk by accelerate" if self.streamed else "in memory"
        computed_in = str(out.dtype).replace("torch.", "")
        return NumericCheck(max_abs_logit_diff=diff, tokens=int(real.sum()), dtype=computed_in, mode=mode)


def _read_when_written(model, wait) -> bool:
    """Make every weight accelerate reads from disk for `model` wait until `wait(name)` says it is written. False
    when that cannot hold: a weight was already read at load (held in memory, or resaved to the offload folder
    after a conversion)."""
    from collections.abc import Mapping

    if any(t.device.type != "meta" for t in model.state_dict().values()):
        return False

    class Waiting(Mapping):
        def __init__(self, loader):
            self.loader = loader

        def __getitem__(self, key):
            info = self.loader.index.get(key)
            if info is not None:
                wait(info.get("weight_name", key))
            return self.loader[key]

        def __iter__(self):
            return iter(self.loader)

        def __len__(self):
            return len(self.loader)

    wrapped: dict[int, Waiting] = {}
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            prefixed = getattr(h, "weights_map", None)
            loader = getattr(prefixed, "dataset", None)
            if loader is None or isinstance(loader, Waiting):
                continue
            if not hasattr(loader, "index") or loader.state_dict:
                return False
            if any("safetensors_file" not in info for info in loader.index.values()):
                return False
            prefixed.dataset = wrapped.setdefault(id(loader), Waiting(loader))
    return bool(wrapped)


def _blame_source_values(source: Source) -> None:
    """Name the first source tensor holding NaN or infinite values (read one tensor at a time)."""
    import torch
    from safetensors import safe_open

    for info in sorted(source.tensors.values(), key=lambda t: (t.file, t.start)):
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            continue
        with safe_open(info.file, "pt") as f:
            if not torch.isfinite(f.get_tensor(info.name)).all():
                raise SourceError(
                    f"{source.label}: tensor {info.name} holds NaN or infinite values; the checkpoint is damaged: "
                    "download it again (or export with --no-verify to copy it as it is)"
                )
    raise SourceError(
        f"{source.label}: the source model itself produces NaN or infinite logits, so no export of it can be "
        "checked; check the checkpoint (or export with --no-verify)"
    )


def fits_in_memory(src: Source, available: int) -> bool:
    """Whether the in-memory check (both models upcast to fp32) is the better path: the two fp32 copies must
    take at most 2 GiB and half the free memory. Above that, streaming from disk is faster as well as
    smaller (README: Limits)."""
    params = sum(math.prod(t.shape) for t in src.tensors.values())
    return 2 * params * 4 <= min(2 * 2**30, available // 2)
