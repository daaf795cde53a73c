"""export(): source + plan -> a verified, physically smaller checkpoint folder.

The folder is assembled in a hidden sibling (`.NAME.skipprune-partial-PID`) and renamed into place only
after verification, so OUTPUT either does not exist or is complete; a killed run leaves only the hidden
partial folder (or, mid-swap with --overwrite, the previous OUTPUT set aside), which the next export to
the same OUTPUT removes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import OutputError, SkippruneError, VerificationError
from ..prune.families import family_for
from ..prune.plan import PrunePlan
from . import surgery, verify
from .source import TOKENIZER_FILES, Source, open_source
from .writer import parse_size, write_shards

PROVENANCE = "skipprune.json"
_PARTIAL = ".skipprune-partial-"
_OLD = ".skipprune-old-"  # a replaced OUTPUT, deleted once the new one is in place


@dataclass
class ExportResult:
    output: Path
    plan: PrunePlan
    source: Source
    stock: bool  # True when the output uses the stock architecture (only whole blocks removed)
    bytes_in: int
    bytes_out: int
    verification: dict = field(default_factory=dict)
    adaptive_ffn: dict | None = None


def export(
    source: str | os.PathLike,
    output: str | os.PathLike,
    plan: PrunePlan | None = None,
    *,
    drop_attn: str | None = None,
    drop_mlp: str | None = None,
    drop_blocks: str | None = None,
    keep_last_layer: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: str = "auto",
    revision: str | None = None,
    overwrite: bool = False,
    verify_numerics: bool | None = None,
    adaptive_ffn: dict | str | None = None,
    log=print,
    card: bool = True,
    command: str | None = None,
) -> ExportResult:
    """Write a copy of `source` without the sublayers the plan removes.

    Give either a PrunePlan or SPEC strings (see skipprune.prune.plan). `verify_numerics=None` compares
    logits against the bypassed source when both models fit comfortably in memory. `adaptive_ffn` (settings
    dict, or 'default' / 'key=value,...') turns on input-adaptive FFN skipping in the exported model; the plan
    may then be empty.
    """
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise SkippruneError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    shard_bytes = parse_size(max_shard_size)
    if isinstance(adaptive_ffn, str):
        adaptive_ffn = surgery.parse_adaptive(adaptive_ffn)
    out = Path(output).expanduser().absolute()
    src = open_source(str(source), revision)
    _check_output(out, src.path, overwrite)
    family = family_for(src.model_type)
    if plan is None:
        plan = PrunePlan.from_specs(src.num_layers, drop_attn, drop_mlp, drop_blocks, keep_last_layer)
    elif plan.num_layers != src.num_layers:
        raise SkippruneError(f"the plan is for {plan.num_layers} layers but the source has {src.num_layers}")
    plan.validate(allow_empty=adaptive_ffn is not None)
    stock = plan.blocks_only and adaptive_ffn is None
    log(f"{src.id}: {family.model_type}, {src.num_layers} layers; {plan.describe()}")

    source_config = _with_layer_types(src.config) if family.derives_layer_types else src.config
    config = surgery.output_config(source_config, plan, family, dtype, adaptive_ffn)
    tensors = surgery.map_tensors(src, plan, family, dtype)
    _clean_stale_partials(out)
    tmp = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        with tqdm(total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True, desc="writing shards",
                  disable=None, leave=False) as bar:  # fmt: skip
            write_shards(tmp, tensors, shard_bytes, bar.update)
        _write_side_files(tmp, src, config, stock=stock)
        checks = {"structure": verify.verify_structure(tmp, tensors)}
        log(f"structure verified: {checks['structure']['tensors']} tensors as planned, kept bytes identical to the source")
        if _should_check_numerics(verify_numerics, src):
            try:
                checks["numerics"] = verify.verify_numerics(tmp, src, plan, family, dtype)
            except (SkippruneError, KeyboardInterrupt):
                raise
            except Exception as e:  # transformers refusing the config, say: report it, never half-succeed
                raise VerificationError(
                    f"could not check logits ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                    "rerun with --no-verify to skip the logit check, and please report this"
                ) from None
            log(f"logits verified: max |diff| {checks['numerics']['max_abs_logit_diff']:.3g} vs the bypassed source")
        else:
            checks["numerics"] = "skipped" if verify_numerics is False else "skipped: model too large for memory"
        result = ExportResult(out, plan, src, stock, src.nbytes, sum(t.nbytes for t in tensors), checks, adaptive_ffn)
        _write_json(tmp / PROVENANCE, provenance(result, dtype, command))
        if card:
            from ..cards.card import write_card

            write_card(tmp, name=out.name)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} ({result.bytes_out / 2**20:.1f} MiB of {result.bytes_in / 2**20:.1f} MiB)")
    return result


def _check_output(out: Path, source: Path, overwrite: bool) -> None:
    real = out.resolve()
    if real == source or source in real.parents:
        raise OutputError(f"OUTPUT {out} is the source folder or inside it; choose a folder outside {source}")
    if real in source.parents:
        raise OutputError(f"OUTPUT {out} contains the source folder; choose a folder that does not hold {source}")
    if out.exists() and not overwrite:
        raise OutputError(f"OUTPUT {out} already exists; pass --overwrite to replace it, or choose another folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"OUTPUT {out} is a file; choose a folder path")
    if not os.access(out.parent if out.parent.exists() else _existing_parent(out), os.W_OK):
        raise OutputError(f"cannot write into {out.parent}; choose a writable location")


def _existing_parent(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def _clean_stale_partials(out: Path) -> None:
    if not out.parent.is_dir():
        return
    for p in [*out.parent.glob(f".{out.name}{_PARTIAL}*"), *out.parent.glob(f".{out.name}{_OLD}*")]:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; an old OUTPUT (with --overwrite) goes only after that."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _with_layer_types(config: dict) -> dict:
    """Spell out `layer_types` when the family derives it from other fields, so slicing keeps each kept
    layer's attention type (sliding or full) instead of re-deriving it for the new numbering."""
    if "layer_types" in config:
        return config
    from transformers import AutoConfig

    try:
        derived = getattr(AutoConfig.for_model(**config), "layer_types", None)
    except Exception:  # the family's own validation will report a broken config more clearly later
        return config
    return {**config, "layer_types": list(derived)} if derived else config


def _write_side_files(folder: Path, src: Source, config: dict, stock: bool) -> None:
    _write_json(folder / "config.json", config)
    if not stock:
        surgery.copy_remote_code(folder)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (src.path / name).is_file():
            shutil.copyfile(src.path / name, folder / name)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def provenance(result: ExportResult, dtype: str, command: str | None) -> dict:
    from importlib.metadata import version

    from .. import __version__

    return {
        "skipprune_version": __version__,
        "transformers_version": version("transformers"),
        "source": {"id": result.source.id, "revision": result.source.revision, "model_type": result.source.model_type},
        "plan": result.plan.to_dict(),
        "architecture": "stock" if result.stock else "skipprune",
        "dtype": dtype,
        "adaptive_ffn_skip": result.adaptive_ffn,
        "bytes": {"source": result.bytes_in, "output": result.bytes_out},
        "verification": result.verification,
        "command": command,
    }


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _should_check_numerics(requested: bool | None, src: Source) -> bool:
    if requested is not None:
        return requested
    params = sum(math.prod(t.shape) for t in src.tensors.values())
    return 2 * params * 4 <= available_memory() // 2  # both models upcast to fp32, within half the free RAM


