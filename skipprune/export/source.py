"""The source checkpoint: a local folder or a Hub snapshot, read lazily from its safetensors headers.

Only headers are parsed (strictly: a truncated shard or a corrupt header is an error, never a crash later);
tensor bytes are read or copied on demand by offset. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError, describe
from ..families.config import LAYER_KEYS, PATTERN_KEYS, layer_count, text_config

# safetensors dtype -> bytes per element
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_MAX_HEADER = 100 << 20
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    # a multimodal model's processor (image / video preprocessing), so its export loads with it
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
# An export's own code files come too (they are compared byte for byte before anything runs them).
_HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
    "configuration_skipprune*.py",
    "modeling_skipprune*.py",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Source:
    path: Path  # a local folder holding the files
    id: str  # what the user passed (folder or Hub id)
    revision: str | None  # Hub commit sha, None for a local folder
    config: dict
    tensors: dict[str, TensorInfo]

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def num_layers(self) -> int:
        return layer_count(self.config)

    @property
    def on_hub(self) -> bool:
        return self.revision is not None

    @property
    def label(self) -> str:
        """How messages and records name the source: the Hub id, or a local folder's name (never its path)."""
        return self.id if self.on_hub else self.path.name

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_source(source: str, revision: str | None = None, check_config=None) -> Source:
    """Resolve SOURCE (folder or Hub id) and index its tensors without reading their bytes.

    `check_config(config)` runs before the headers are read (the family check: a clearer error first)."""
    folder, sha = resolve_folder(source, revision)
    config = read_config(folder, source)
    if check_config:
        check_config(config)
    text = text_config(config)
    key = next((k for k in LAYER_KEYS + PATTERN_KEYS if k in text), "num_hidden_layers")
    layers = text.get(key) if key in LAYER_KEYS else layer_count(config)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise SourceError(
            f"{source}: config.json has {key}={layers!r}, not a positive whole number; "
            "restore config.json from the original model"
        )
    return Source(folder, source, sha, config, index_tensors(folder))


def read_config(folder: Path, label: str) -> dict:
    """config.json of a model folder as a dict, or a one-line error saying what is wrong with it."""
    path = folder / "config.json"
    if not path.is_file():
        raise SourceError(f"{label}: no config.json in the folder; point at a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: not readable JSON ({e}); restore config.json from the original model") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path}: not a JSON object; restore config.json from the original model")
    return config_floats(config)


# transformers writes the floats JSON lacks (inf, nan) in config.json as {"__float__": "Infinity"}
_SPECIAL = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def config_floats(value, encode: bool = False):
    """`value` with transformers' config.json spelling of inf and nan decoded into floats, or `encode`d back."""
    if encode and isinstance(value, float) and not math.isfinite(value):
        return {"__float__": "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, dict):
        if not encode and value.keys() == {"__float__"} and value["__float__"] in _SPECIAL:
            return _SPECIAL[value["__float__"]]
        return {k: config_floats(v, encode) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_floats(v, encode) for v in value]
    return value


def resolve_folder(source: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder as it is, or a Hub id downloaded (needed files only); returns (folder, commit sha)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision:
            raise SourceError(f"--revision applies to Hub ids, but {source} is a local folder; drop --revision")
        return path.resolve(), None
    if path.exists():
        raise SourceError(f"{source} is a file; SOURCE must be a model folder or a Hub id")
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or not _REPO_ID.match(source):
        raise SourceError(f"no such folder: {source}; check the path (or pass a Hub id like org/name)")
    return _download(source, revision)


def _download(repo_id: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=False)
        files = [s.rfilename for s in info.siblings or []]
        if not any(f.endswith(".safetensors") for f in files):
            if any(f.endswith((".bin", ".pt", ".pth")) for f in files):
                raise SourceError(_BIN_ONLY.format(src=repo_id))
            raise SourceError(f"{repo_id}: the repository has no .safetensors weights")
        folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=_HUB_FILES)
        return Path(folder), info.sha
    except SourceError:
        raise
    except RepositoryNotFoundError:
        raise SourceError(f"Hub model {repo_id} not found (or private: log in with `hf auth login`)") from None
    except GatedRepoError:
        raise SourceError(f"Hub model {repo_id} is gated: accept its terms on the Hub, then log in") from None
    except RevisionNotFoundError:
        raise SourceError(f"revision {revision!r} not found in {repo_id}; check --revision") from None
    except Exception as e:  # offline mode, refused connection (httpx errors are not OSErrors), HTTP 5xx
        raise SourceError(
            f"could not reach the Hub for {repo_id} ({describe(e)}); check the network, or pass a local folder"
        ) from None


_BIN_ONLY = (
    "{src} has only pickle (.bin/.pt) weights, which skipprune never loads (unpickling runs code); convert them "
    "once in a trusted environment: "
    "AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True)"
)


def index_tensors(folder: Path) -> dict[str, TensorInfo]:
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise SourceError(_BIN_ONLY.format(src=folder))
        raise SourceError(f"{folder}: no .safetensors weights in the folder")
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{index_file}: unreadable shard index ({e}); restore it from the original") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SourceError(f"{folder}: shard {missing[0]} listed in the index is missing; download it again")
        shards = [folder / n for n in names]
    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        for info in read_header(shard):
            if info.name in tensors:
                raise SourceError(f"{shard}: tensor {info.name} also appears in {tensors[info.name].file.name}")
            tensors[info.name] = info
    return tensors


def read_header(path: Path) -> list[TensorInfo]:
    """Parse and check one safetensors header against the file's real size."""
    size = path.stat().st_size

    def corrupt(why: str) -> SourceError:
        return SourceError(f"{path}: corrupt safetensors file ({why}); download or convert it again")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise corrupt(f"header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise corrupt("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    base = 8 + n
    out, spans = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = dtype in DTYPE_SIZES and all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= a <= b
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise corrupt(f"bad entry for tensor {name}")
        if b - a != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise corrupt(f"tensor {name} has {b - a} bytes for shape {list(shape)} {dtype}")
        if base + b > size:
            raise SourceError(
                f"{path}: truncated shard ({size} bytes, tensor {name} needs {base + b}); download it again"
            )
        out.append(TensorInfo(name, path, dtype, shape, base + a, base + b))
        spans.append((a, b))
    spans.sort()
    if any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)):
        raise corrupt("tensors overlap")
    return out


def read_bytes(info: TensorInfo) -> bytes:
    with open(info.file, "rb") as f:
        f.seek(info.start)
        data = f.read(info.nbytes)
    if len(data) != info.nbytes:
        raise SourceError(f"{info.file}: truncated while reading {info.name}; download it again")
    return data
