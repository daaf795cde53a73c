"""Loading models to measure them: resolve, refuse code that was not opted into, check the model fits, then
load it with its tokenizer.

Remote code: an export whose code is exactly skipprune's own (see remote.is_own_code) is loaded with
trust_remote_code; any other model's own code runs only with trust_remote_code=True. Tokenizers of exports
are stock and always load without remote code.
"""

from __future__ import annotations

import atexit
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import formats
from ..errors import MeasureError, SourceError, translated
from ..export.source import index_tensors, read_config, resolve_folder
from ..families.config import text_config
from ..families.discover import NoDecoderBlocks
from ..prune.family import Family
from ..remote import is_own_code, released_code
from ..system import available_memory

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything about a model but its weights."""

    ref: str  # as the user gave it
    label: str  # how records name it: the Hub id, or a local folder's name
    folder: Path
    config: dict
    trust: bool  # run the model's own code
    tokenizer: object
    stream: bool = False  # too large for the device: weights stay on disk, blocks run one at a time

    @property
    def max_positions(self) -> int:
        config = text_config(self.config)
        return int(config.get("max_position_embeddings") or 2048)

    @property
    def vocab_size(self) -> int | None:
        return text_config(self.config).get("vocab_size")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MeasureError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def prepare(
    ref: str,
    device: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    spread: bool = False,
    streamable: bool = True,
) -> Prepared:
    """Resolve `ref`, refuse foreign code, load the tokenizer; a model that won't fit on `device` (unless
    accelerate will `spread` it as asked) is marked to be streamed from disk block by block, or refused where
    that cannot serve (training)."""
    folder, sha = resolve_folder(ref, revision)
    config = read_config(folder, ref)
    own = is_own_code(folder, config)
    needs_code = "auto_map" in config
    if needs_code and not (own or trust_remote_code):
        if earlier := released_code(folder, config):
            raise MeasureError(
                f"{ref} ships the code of {earlier}, not of this skipprune: `skipprune refresh {ref}` updates it "
                "(checked on its weights first), or pass --trust-remote-code to run it as it is"
            )
        raise MeasureError(
            f"{ref} ships its own modeling code, which is not exactly skipprune's; pass --trust-remote-code if you "
            "trust it"
        )
    device = pick_device(device)  # only now: a bad path fails before torch is imported
    stream = not spread and not _fits(folder, ref, device, 4 if device == "cpu" else None)
    if stream and not streamable:
        raise MeasureError(
            f"{ref} does not fit in the free memory of {device}; use --device-map auto (spreads it over GPUs, CPU "
            "memory and disk), a larger device, or a smaller model"
        )
    tokenizer = _tokenizer(folder, ref, config, own, trust_remote_code)
    label = ref if sha else folder.name
    return Prepared(ref, label, folder, config, own or trust_remote_code, tokenizer, stream)


def _tokenizer(folder: Path, ref: str, config: dict, own: bool, trust_remote_code: bool):
    from transformers import AutoConfig, AutoTokenizer

    with translated(MeasureError, f"loading the tokenizer of {ref}", "check its tokenizer files"):
        if own:  # an export's tokenizer is its source's: hand over the stock config, run no code
            stock = AutoConfig.for_model(**formats.of_config(config).tokenizer_config(config))
            return AutoTokenizer.from_pretrained(folder, config=stock, trust_remote_code=False)
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def load_model(
    prepared: Prepared,
    device: str,
    device_map: str | None = None,
    max_memory: dict | None = None,
    keep_dtype: bool = False,
):
    """fp32 on CPU (bf16 matmuls there are slow and imprecise), the checkpoint dtype on CUDA. With a
    `device_map` (accelerate: auto, balanced, sequential, ...), the checkpoint dtype, the layers spread over
    the GPUs and `max_memory`, the rest offloaded to CPU memory and then to disk (weights read when a module
    runs, from the safetensors files where they can be). With `device_map="stream"`, or for a model that does
    not fit (`prepared.stream`): every block on disk, read when it runs (measure/stream.py runs them one at a
    time over all windows), on the GPU when there is one. `keep_dtype`: the checkpoint dtype on the CPU too
    (a copy that is sharded over GPUs from there)."""
    import torch
    from transformers import AutoModelForCausalLM

    options: dict = {"dtype": torch.float32 if device == "cpu" and not keep_dtype else "auto"}
    streamed = device_map == "stream" or prepared.stream
    if device_map or streamed:
        offload = tempfile.mkdtemp(prefix="skipprune-offload-")
        atexit.register(shutil.rmtree, offload, ignore_errors=True)
        if streamed:
            from ..export.offload import streaming_map

            log.info("%s: weights stay on disk, blocks are read one at a time", prepared.label)
            try:
                blocks = streaming_map(prepared.folder, prepared.trust)
            except NoDecoderBlocks as e:
                raise MeasureError(
                    f"{prepared.label} cannot run block by block ({e}); use --device-map auto, or a larger device"
                ) from None
            # loaded in the checkpoint's dtype: asking for fp32 here makes transformers read every weight now
            options = {"dtype": "auto", "device_map": blocks}
        else:
            options = {"dtype": "auto", "device_map": device_map, "max_memory": max_memory}
        options["offload_folder"] = offload
    with translated(MeasureError, f"loading {prepared.ref}", "check the model folder"):
        model = AutoModelForCausalLM.from_pretrained(prepared.folder, trust_remote_code=prepared.trust, **options)
        if "device_map" not in options:
            model = model.to(device)
    if streamed and device == "cpu":
        _read_as(model, torch.float32)
    return model.eval()


def _read_as(model, dtype) -> None:
    """Make the meta-device placeholders of offloaded weights `dtype`: accelerate casts each weight to its
    placeholder's dtype when it reads it, so a streamed model computes in fp32 on the CPU, as in memory."""
    import torch

    new: dict[int, torch.nn.Parameter] = {}  # tied weights stay one parameter
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device.type == "meta" and p.is_floating_point():
                if id(p) not in new:
                    new[id(p)] = torch.nn.Parameter(torch.empty_like(p, dtype=dtype), requires_grad=False)
                module._parameters[name] = new[id(p)]


def input_device(model):
    """Where a model's inputs go: its embedding's device; with weights offloaded by accelerate (on the meta
    device until their module runs), the CPU, where its hooks run them."""
    import torch

    dev = model.get_input_embeddings().weight.device
    return torch.device("cpu") if dev.type == "meta" else dev


def placement(model) -> str:
    """The device a model runs on, or its spread (e.g. 'cpu+disk') when accelerate dispatched it."""
    spread = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    return "+".join(spread) if len(spread) > 1 or spread == ["disk"] else str(input_device(model))


def prepare_stock(
    ref: str, device: str, trust_remote_code: bool = False, spread: bool = False, streamable: bool = True
) -> tuple[Prepared, Family]:
    """A stock model of a supported family (what analyze and sweep take), refused before loading otherwise."""
    prepared = prepare(ref, device, trust_remote_code, spread=spread, streamable=streamable)
    if prepared.config.get("model_type") == "skipprune":
        raise SourceError(f"{ref} is already a skipprune export; use the source model instead")
    from ..families import family_of

    return prepared, family_of(prepared.config)


def _fits(folder: Path, ref: str, device: str, bytes_per_param: int | None) -> bool:
    tensors = index_tensors(folder).values()
    need = (
        sum(math.prod(t.shape) * bytes_per_param for t in tensors)
        if bytes_per_param
        else sum(t.nbytes for t in tensors)
    )
    if device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0]
    else:
        free = available_memory()
    if need > 0.9 * free:
        log.info("%s needs about %.1f GiB on %s but %.1f GiB are free", ref, need / 2**30, device, free / 2**30)
        return False
    return True
