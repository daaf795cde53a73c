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
import re
from pathlib import Path

import numpy as np

from ..errors import SourceError, VerificationError, translated
from ..prune.families import Family
from ..prune.plan import PrunePlan
from ..records import NumericCheck, StructureCheck
from ..system import block_progress
from .anatomy import checkpoint_names
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


def verify_structure(folder: Path, expected: list[OutTensor], changed: frozenset[str] = frozenset()) -> StructureCheck:
    """The shards hold exactly the `expected` names, shapes and dtypes, and their bytes are the sources' (all but
    the `changed` ones: weights a healing trained)."""
    written = index_tensors(folder)
    want = {t.name: t for t in expected}
    if set(written) != set(want):
        extra, missing = sorted(set(written) - set(want)), sorted(set(want) - set(written))
        raise VerificationError(f"export holds unexpected tensors {extra[:3]} / lacks {missing[:3]}; {_REPORT}")
    for name, info in written.items():
        if (info.dtype, info.shape) != (want[name].dtype, want[name].shape):
            raise VerificationError(f"tensor {name} was written as {info.dtype}{list(info.shape)}; {_REPORT}")
    fds: dict[Path, int] = {}
    try:
        for name, info in sorted(written.items(), key=lambda kv: (kv[1].file, kv[1].start)):
            if name in changed:
                continue
            t = want[name]
            if t.source is None:
                same = not _window(fds, info, 0, info.nbytes).any()
            elif t.dtype != t.source.dtype:
                same = _window(fds, info, 0, info.nbytes).tobytes() == convert_bytes(t)
            else:
                same = all(_same_chunk(fds, info, t.source, a) for a in range(0, info.nbytes, _CHUNK))
            if not same:
                raise VerificationError(
                    f"bytes of {name} differ from the source; the disk may be failing, export again"
                )
    finally:
        for fd in fds.values():
            os.close(fd)
    converted = sorted({t.dtype for t in expected if t.source is not None and t.dtype != t.source.dtype})
    return StructureCheck(
        tensors=len(written),
        bytes_compared=sum(i.nbytes for n, i in written.items() if n not in changed),
        converted_to=_DTYPE_NAMES[converted[0]] if converted else None,
    )


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
    checkpoint's dtype (or the converted one)."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from ..prune.bypass import bypassed

    vocab = int(source.config.get("vocab_size") or source.config.get("text_config", {}).get("vocab_size"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, tokens), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, : tokens // 4] = 0  # left padding in the second row
    real = mask.bool()
    with tempfile.TemporaryDirectory(prefix="skipprune-offload-") as offload:
        target = "auto" if dtype == "auto" else getattr(torch, dtype)

        def load(path: Path, own_code: bool) -> dict:
            if dispatch:
                return {
                    "dtype": target,
                    "device_map": dispatch[0],
                    "max_memory": dispatch[1],
                    "offload_folder": offload,
                }
            if not streamed:
                return {"dtype": torch.float32}
            return {"dtype": target, "device_map": streaming_map(path, own_code), "offload_folder": offload}

        with translated(
            VerificationError, "loading the source for the logit check", f"rerun with --no-verify; {_REPORT}"
        ):
            reference = AutoModelForCausalLM.from_pretrained(source.path, **load(source.path, False))
        if dtype != "auto" and not streamed and not dispatch:
            with torch.no_grad():
                for p in reference.parameters():
                    p.copy_(p.to(getattr(torch, dtype)))
        with torch.no_grad(), bypassed(reference, plan, family), block_progress(family.layers(reference), "source"):
            want = reference(input_ids=ids, attention_mask=mask).logits.float()
        del reference
        if not torch.isfinite(want[real]).all():
            _blame_source_values(source)
        with translated(VerificationError, "loading the export for the logit check", _REPORT):
            exported, loading = AutoModelForCausalLM.from_pretrained(
                folder, trust_remote_code=True, output_loading_info=True, **load(folder, True)
            )
        if loading["missing_keys"]:
            missing = sorted(loading["missing_keys"])
            raise VerificationError(f"the export lacks {missing[:3]}, which its model needs; {_REPORT}")
        with torch.no_grad(), block_progress(family.layers(exported), "export"):
            out = exported(input_ids=ids, attention_mask=mask).logits
        del exported
    computed_in = str(out.dtype).replace("torch.", "")
    diff = (out.float() - want)[real].abs().max().item()
    if not diff <= 1e-5:
        raise VerificationError(f"exported logits differ from the bypassed source by {diff:.3g} (> 1e-5); {_REPORT}")
    if dispatch:
        mode = f"dispatched by accelerate ({dispatch[0]})"
    else:
        mode = "streamed from disk by accelerate" if streamed else "in memory"
    return NumericCheck(max_abs_logit_diff=diff, tokens=int(real.sum()), dtype=computed_in, mode=mode)


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
    smaller (measured on a 1.1B checkpoint: 6.3 s and 0.6 GiB against 12.5 s and 6.5 GiB)."""
    params = sum(math.prod(t.shape) for t in src.tensors.values())
    return 2 * params * 4 <= min(2 * 2**30, available // 2)
