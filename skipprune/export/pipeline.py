"""export(): source + plan -> a verified, physically smaller checkpoint folder.

Everything that can be checked is checked before a byte is written: the options, the output path, the
source's config against its shards, the plan. Then the folder is assembled in a hidden sibling
(`.NAME.skipprune-partial-PID`), verified, flushed to stable storage (every file, then the folder), and
renamed into place. So OUTPUT either does not exist or is complete, after a kill or a power loss too. A
killed run leaves only the hidden partial folder (or, mid-swap with --overwrite, the previous OUTPUT set
aside), which the next export to the same OUTPUT removes; SIGTERM and Ctrl-C clean up at once. A lock file
keeps two exports from writing the same OUTPUT at once. A large export checks beside its copy: kept bytes as
they are written, and its logits and figures in child processes (sidecar.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from tqdm.auto import tqdm

from .. import formats
from ..cards.card import write_card
from ..errors import OutputError, PlanError, translated
from ..families import check_config, family_of
from ..families.check import check_cached_decoding
from ..families.discover import model_names
from ..prune.adaptive import check_layers, parse_adaptive
from ..prune.plan import PrunePlan, parse_spec
from ..records import ByteCounts, ExportRecord, NumericCheck, PlanFile, SourceRef, Verification, encode
from ..system import Clock, Flusher, available_memory, placement_options
from . import layout, sidecar, verify
from .source import TOKENIZER_FILES, Source, config_floats, open_source
from .staging import check_output, check_output_parent, publish, staging
from .writer import parse_size, write_shards

log = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ExportResult:
    output: Path
    record: ExportRecord


def export(
    source: str | os.PathLike,
    output: str | os.PathLike,
    plan: PrunePlan | None = None,
    *,
    drop_attn: str | None = None,
    drop_mlp: str | None = None,
    drop_blocks: str | None = None,
    drop_mixer: str | None = None,
    keep_last_layer: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: str = "auto",
    revision: str | None = None,
    overwrite: bool = False,
    verify_numerics: bool | None = None,
    device_map: str | None = None,
    max_memory: str | dict | None = None,
    adaptive_ffn: dict | str | None = None,
    format: str = "default",
    card: bool = True,
    command: str | None = None,
    plan_file: str | os.PathLike | None = None,
) -> ExportResult:
    """Write a copy of `source` without the sublayers the plan removes.

    Give either a PrunePlan or SPEC strings (see skipprune.prune.plan); in a hybrid family, `drop_attn` names
    attention layers only and `drop_mixer` any token mixer (linear attention, Mamba, ...). Logits are compared
    against the bypassed source unless `verify_numerics=False`: in memory when both models fit comfortably, else with
    the weights streamed from disk; `device_map` / `max_memory` (accelerate's, e.g. "auto" and
    {0: "20GiB"}; "stream" for disk) place both models for that check instead. `adaptive_ffn` (settings
    dict, or 'default' / 'key=value,...') turns on input-adaptive FFN skipping in the exported model; the plan
    may then be empty. `format="nemotron-nas"` writes the serving format (see skipprune.formats) that vLLM,
    SGLang, TensorRT-LLM and llama.cpp load. `command` overrides the reproduce line of the records (built from
    the arguments). `plan_file`: a plan file from `skipprune search`, instead of a plan or SPECs; how the plan
    was chosen goes into the records and the card.
    """
    clock = Clock()
    if dtype not in DTYPES:
        raise PlanError(f"unknown dtype {dtype!r}: use {', '.join(DTYPES)}")
    placement = placement_options(device_map, max_memory)
    formats.check_option(format)
    shard_bytes = parse_size(max_shard_size)
    adaptive = parse_adaptive(adaptive_ffn)
    out = Path(output).expanduser().absolute()
    check_output_parent(out)
    with contextlib.ExitStack() as helpers:
        # Started first, so that their imports overlap the checks below; given their jobs once staging exists.
        warm = _warm_sidecars(helpers, source, card, verify_numerics, device_map)
        searched = None
        if plan_file is not None:
            if plan is not None or drop_attn or drop_mlp or drop_blocks or drop_mixer or keep_last_layer:
                raise PlanError(
                    "give either --plan FILE or --drop-attn/--drop-mixer/--drop-mlp/--drop-blocks, not both"
                )
            searched = PlanFile.load(Path(plan_file))
        src = open_source(str(source), revision, check_config=check_config)
        check_output(out, src.path, overwrite)
        if searched is not None:
            if why := searched.model.mismatch(src.config, src.label):
                raise PlanError(f"{Path(plan_file).name}: {why}; run `skipprune search` on {src.label}")
            plan = searched.plan
        if plan is None:
            plan = PrunePlan.from_specs(src.num_layers, drop_attn, drop_mlp, drop_blocks, keep_last_layer, drop_mixer)
            specs = (drop_attn, drop_mlp, drop_blocks, keep_last_layer, drop_mixer)
        elif plan.num_layers != src.num_layers:
            raise PlanError(f"the plan is for {plan.num_layers} layers but the source has {src.num_layers}")
        else:
            specs = None
        plan.validate(allow_empty=adaptive is not None)
        family = family_of(src.config, split=not plan.blocks_only or adaptive is not None)
        family.check(plan)
        specs = specs or _plan_specs(plan, family)
        if drop_attn:
            family.check_attention(
                parse_spec(drop_attn, src.num_layers, keep_last_layer) - plan.drop_mlp, src.num_layers
            )
        if adaptive is not None and any(isinstance(family.at(i).mlp_returns, tuple) for i in range(plan.num_layers)):
            raise PlanError(
                f"{family.model_type}: adaptive FFN skipping skips one MLP module per block, and its blocks run "
                "several in parallel (experts and a shared MLP); leave out --adaptive-ffn"
            )
        check_layers(adaptive, len(plan.layers))
        fmt = formats.chosen(format, plan, adaptive)
        fmt.check(src.config, plan, family, adaptive)
        ignored = verify.check_source(src, family)
        source_config = layout.with_layer_types(src.config)
        layout.check_renumbering(source_config, plan, family)
        check_cached_decoding(source_config, family, plan)
        log.info(
            "%s: %s, %d layers; %s", src.label, family.model_type, src.num_layers, plan.describe(family.mixer_noun)
        )
        if ignored:
            log.info("leaving out %d tensor(s) the model never reads: %s", len(ignored), ", ".join(ignored[:3]))
        config = layout.output_config(source_config, plan, family, dtype, fmt, adaptive)
        zero_ffn = fmt.stand_ins(plan)
        keep_norm = frozenset(layer.source for layer in plan.layers if layer.output in zero_ffn)
        # Where the stock class renames weights on load, skipprune's modeling file takes them under the loaded names.
        rename = model_names(src.config) if family.renamed and fmt.model_naming else None
        tensors = layout.map_tensors(src, plan, family, dtype, frozenset(ignored), keep_norm, rename)
        tensors += layout.stand_in_tensors(src, plan, family, dtype, fmt)
        command = command or _command(src, out.name, specs, dtype, adaptive, format)
        code = fmt.code_files

        numerics = _numerics_mode(src, verify_numerics, placement)
        # (helpers again: the children are stopped before a failed export's partial folder is removed)
        with staging(out, overwrite) as tmp, helpers:
            total = sum(t.nbytes for t in tensors)
            clock.lap("source checks")
            with translated(
                OutputError, f"writing {out.name}'s config and tokenizer files", "check the output location"
            ):
                _write_side_files(tmp, src, config, code)
            # A large copy takes long enough to hide the start of a child process: the figures and the source's half
            # of a streamed logit check run beside it.
            overlap = src.nbytes >= sidecar.OVERLAP_BYTES

            def child(task: str) -> sidecar.Sidecar:
                return warm.pop(task, None) or helpers.enter_context(sidecar.Sidecar(task))

            figures = logits = None
            if overlap and card and not _drawing_is_cheap():
                search = encode(searched.search) if searched else None
                figures = child("figures")
                figures.start({"folder": str(tmp), "plan": plan.to_dict(), "search": search, "name": out.name})
            if src.nbytes >= sidecar.LOGITS_OVERLAP_BYTES and numerics == (True, None):
                split = not plan.blocks_only or adaptive is not None
                job = {"path": str(src.path), "id": src.id, "revision": src.revision, "plan": plan.to_dict()}
                logits = child("logits")
                logits.start({**job, "split": split, "dtype": dtype, "folder": str(tmp)})
            for unused in warm.values():  # (the logits are compared in memory after all)
                unused.close()
            with (
                clock("copy and byte check"),
                tqdm(total=total, unit="B", unit_scale=True, desc="writing shards", disable=None, leave=False) as bar,
            ):
                compared = verify.ByteCheck(behind=True)

                def check(t, where) -> None:
                    compared(t, where)
                    if logits is not None:
                        logits.send({"written": t.name})

                try:
                    write_shards(tmp, tensors, shard_bytes, bar.update, check)
                    compared.finish()
                finally:
                    compared.close()
            flusher = Flusher(sorted(tmp.glob("*.safetensors")))  # written back while they are checked
            verification = _verify(
                tmp, src, plan, family, dtype, tensors, numerics, rename is not None, clock, compared, logits
            )
            record = ExportRecord(
                source=SourceRef(src.label, src.revision, src.model_type),
                plan=plan,
                architecture=fmt.name,
                format=format,
                zero_ffn_layers=zero_ffn,
                mixers=[family.at(i).mixer for i in range(src.num_layers)] if family.mixer_noun != "attention" else [],
                bytes=ByteCounts(source=src.nbytes, output=total),
                verification=verification,
                dtype=dtype,
                adaptive_ffn_skip=adaptive,
                ignored_tensors=ignored,
                command=command,
                transformers_version=version("transformers"),
                search=searched.search if searched else None,
            )
            with translated(OutputError, f"writing {out.name}'s records and card", "check the output location"):
                # (publish flushes the whole folder)
                record.save(tmp, flush=False)
                if card:
                    with clock("card"):
                        if figures is not None:
                            figures.result()
                        write_card(tmp, record, None, name=out.name, drawn=figures is not None, flush=False)
            with clock("flush"):
                publish(tmp, out, overwrite, flusher)
        log.info("wrote %s (%.1f MiB of %.1f MiB)", out, total / 2**20, src.nbytes / 2**20)
        log.info("export took %s", clock.summary())
        return ExportResult(out, record)


def _warm_sidecars(helpers, source, card: bool, numerics: bool | None, device_map) -> dict[str, sidecar.Sidecar]:
    """Children for a local source of at least OVERLAP_BYTES, started before anything is checked: they import
    what they need while the export checks its source (see sidecar.py)."""
    folder = Path(source).expanduser()
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    tasks = ["figures"] if size >= sidecar.OVERLAP_BYTES and card and not _drawing_is_cheap() else []
    if size >= sidecar.LOGITS_OVERLAP_BYTES and numerics is not False and device_map in (None, "stream"):
        tasks.append("logits")
    return {task: helpers.enter_context(sidecar.Sidecar(task)) for task in tasks}


def _drawing_is_cheap() -> bool:
    """Whether this process has imported matplotlib already (then the figures are drawn here)."""
    return "matplotlib" in sys.modules


def _numerics_mode(src: Source, numerics: bool | None, placement: tuple) -> tuple | None:
    """How the logits will be compared: (streamed, dispatch), or None with --no-verify."""
    if numerics is False:
        return None
    device_map, max_memory = placement
    streamed = device_map == "stream" or (not device_map and not verify.fits_in_memory(src, available_memory()))
    if streamed and not device_map:
        log.info("comparing logits with weights streamed from disk (the models do not fit in memory together)")
    return streamed, None if streamed or not device_map else (device_map, max_memory)


def _verify(
    tmp: Path,
    src: Source,
    plan,
    family,
    dtype: str,
    tensors,
    numerics: tuple | None,
    model_naming: bool = False,
    clock: Clock | None = None,
    compared: verify.ByteCheck | None = None,
    logits: sidecar.Sidecar | None = None,
) -> Verification:
    """Structure, then logits (`numerics`: see _numerics_mode), the source's half of which `logits` may be
    computing already."""
    clock = clock or Clock()
    with clock("structure check"):
        structure = verify.verify_structure(tmp, tensors, compared=compared)
    with clock("model check"):
        verify.check_model_expects(tmp, tensors, model_naming)
    structure.model_expects_them = True
    kept = (
        f"kept tensors equal the source's converted to {structure.converted_to}"
        if structure.converted_to
        else ("kept bytes identical to the source")
    )
    log.info("structure verified: %d tensors as planned, expected by the model; %s", structure.tensors, kept)
    if numerics is None:
        return Verification(structure, numerics_skipped="--no-verify")
    streamed, dispatch = numerics
    with clock("logit check"):
        if logits is not None:
            logits.send(True)
            check = NumericCheck(**logits.result())
        else:
            check = verify.verify_numerics(tmp, src, plan, family, dtype, streamed=streamed, dispatch=dispatch)
    log.info("logits verified (%s): max |diff| %.3g vs the bypassed source", check.mode, check.max_abs_logit_diff)
    return Verification(structure, numerics=check)


def _plan_specs(plan: PrunePlan, family) -> tuple:
    """The --drop-* SPECs of a plan (see PrunePlan.drop_specs), in `export`'s argument order."""
    mixers = set(family.not_attention(plan.drop_attention)) if family.kinds or family.mixer != "attention" else set()
    specs = plan.drop_specs(mixers)
    return specs.get("drop_attn"), specs.get("drop_mlp"), specs.get("drop_blocks"), False, specs.get("drop_mixer")


def _command(src: Source, name: str, specs, dtype: str, adaptive: dict | None, format: str) -> str:
    """The export command that reproduces this one, naming the source by Hub id or folder name, never a path."""
    drop_attn, drop_mlp, drop_blocks, keep_last, drop_mixer = specs
    parts = ["skipprune", "export", src.label, name]
    if src.on_hub:
        parts += ["--revision", src.revision]
    flags = ("--drop-attn", "--drop-mixer", "--drop-mlp", "--drop-blocks")
    for flag, spec in zip(flags, (drop_attn, drop_mixer, drop_mlp, drop_blocks)):
        if spec:
            parts += [flag, spec]
    if keep_last:
        parts.append("--keep-last-layer")
    if dtype != "auto":
        parts += ["--dtype", dtype]
    if adaptive:
        parts += ["--adaptive-ffn", ",".join(f"{k}={v}" for k, v in adaptive.items())]
    if format != "default":
        parts += ["--format", format]
    return shlex.join(parts)


def _write_side_files(folder: Path, src: Source, config: dict, code: tuple[str, ...]) -> None:
    text = json.dumps(config_floats(config, encode=True), indent=2)
    (folder / "config.json").write_text(text + "\n", encoding="utf-8")
    layout.copy_remote_code(folder, code)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (src.path / name).is_file():
            shutil.copyfile(src.path / name, folder / name)
