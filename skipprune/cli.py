"""The `skipprune` command: a thin shell over the Python API.

Exit status: 0 success; 1 an error skipprune reports (bad input, environment, a failed check), printed as
one line `error: ...` saying what is wrong and how to fix it; 2 a malformed command line (unknown option,
a value of the wrong type), also one line; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Progress goes
to stderr, results to stdout. Every argument and output path is checked before any model is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from . import formats
from .errors import SkippruneError, describe

SPEC_HELP = "SPEC: last:N, last:P% or indices/ranges like 20-31,5 (0-based, source numbering)"


class _Group(click.Group):
    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except click.exceptions.NoArgsIsHelpError as e:  # plain `skipprune`: the help, as click would show it
            click.echo(e.format_message())
            sys.exit(0)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            _fail(f"{e.format_message()}{hint}", 2)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except SkippruneError as e:
            _fail(str(e), 1)
        except KeyboardInterrupt:
            _fail("interrupted (an unfinished export leaves no OUTPUT behind)", 130)
        except Exception as e:
            if os.environ.get("SKIPPRUNE_DEBUG"):
                raise
            _fail(f"internal error ({describe(e)}); please report this (SKIPPRUNE_DEBUG=1 shows the traceback)", 1)


def _fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Progress(logging.Handler):
    """Progress lines on stderr; `note` (the thread choice) goes before the first one, so a command that fails
    on bad input still prints one line."""

    note: str | None = None

    def emit(self, record):
        if self.note:
            click.echo(self.note, err=True)
            self.note = None
        click.echo(record.getMessage(), err=True)


class OutputFile(click.ParamType):
    """A file to write later: its folder must exist and be writable now, before minutes of work."""

    name = "PATH"

    def convert(self, value, param, ctx):
        path = Path(value).expanduser()
        if path.is_dir():
            self.fail(f"{value} is a folder; give a file path", param, ctx)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            self.fail(f"the folder of {value} does not exist; create it first", param, ctx)
        if not os.access(parent, os.W_OK):
            self.fail(f"cannot write into {parent}", param, ctx)
        return path


def _options(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


text_option = click.option(
    "--text", metavar="FILE", help="Text to measure on: a file, 'bundled' (default) or 'wikitext2'."
)
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
trust_option = click.option(
    "--trust-remote-code", is_flag=True, help="Allow the models' own code (an export's own is always allowed)."
)
json_option = click.option("--json", "json_path", type=OutputFile(), help="Write the results JSON here.")
plot_option = click.option("--plot", "plot_path", type=OutputFile(), help="Write a PNG plot here.")
tasks_options = _options(
    click.option("--tasks", metavar="LIST", help="lm-eval tasks, comma separated: names or task YAML paths."),
    click.option("--limit", type=click.IntRange(min=1), help="At most this many examples per task (quick runs)."),
)
PLACEMENTS = ["auto", "balanced", "balanced_low_0", "sequential"]


def spread_options(stream: bool = True):
    return _options(
        click.option(
            "--device-map",
            type=click.Choice(PLACEMENTS + ["stream"] * stream),
            help="Spread the model with accelerate over the GPUs, then CPU memory, then disk (checkpoint dtype)"
            + (
                "; stream: every block on disk, run one at a time over all windows (chosen by itself for a model "
                "that does not fit)."
                if stream
                else "."
            ),
        ),
        click.option(
            "--max-memory",
            metavar="LIST",
            help="With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB.",
        ),
    )


speed_option = click.option(
    "--speed/--no-speed", default=True, show_default=True, help="Measure 1-token latency and decode speed."
)


def _task_list(tasks: str | None) -> list[str]:
    return [t.strip() for t in (tasks or "").split(",") if t.strip()]


def _write_json(path: Path | None, data) -> None:
    if path:
        from .system import write_text_durably

        write_text_durably(path, json.dumps(data, indent=2) + "\n")
        click.echo(f"written to {path}", err=True)


# Commands that run a model: they get a thread count and transformers' loading bars are quietened.
_COMPUTE = {"export", "heal", "eval", "analyze", "search", "sweep", "demo"}


@click.group(cls=_Group)
@click.version_option(package_name="skipprune")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (default: OMP_NUM_THREADS, else one per core other processes leave free).",
)
@click.pass_context
def main(ctx, threads):
    """Physically delete attention sublayers, MLP sublayers or whole blocks from a Hugging Face causal LM."""
    # SIGTERM unwinds like Ctrl-C, so whatever is half-written is removed on the way out (exit status 143).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logger = logging.getLogger("skipprune")
    progress = next((h for h in logger.handlers if isinstance(h, _Progress)), None)
    if progress is None:
        logger.addHandler(progress := _Progress())
    logger.setLevel(logging.INFO)
    if ctx.invoked_subcommand in _COMPUTE:
        # only once torch / transformers are imported: a command that fails on bad input never pays for that
        def set_threads(torch) -> None:
            from .system import set_threads

            before = torch.get_num_threads()
            progress.note = set_threads(threads)
            ctx.call_on_close(lambda: torch.set_num_threads(before))  # Python callers keep their setting

        _after_import("torch", set_threads)
        _after_import("transformers.utils.logging", _quiet_loading_bars)


def _after_import(module: str, callback) -> None:
    """Call `callback(module)` now if `module` is imported, else right after it is."""
    if module in sys.modules:
        return callback(sys.modules[module])
    import importlib.abc
    import importlib.util

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != module:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None:
                load = spec.loader.exec_module

                def exec_module(mod):
                    load(mod)
                    callback(mod)

                spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def _quiet_loading_bars(hf_logging) -> None:
    """transformers draws a "Loading weights" bar for every model it loads, 2 to 4 per command; show one only
    when the load takes more than 2 seconds."""

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "delay": 2}
        return factory(*args, **kwargs)

    if hasattr(hf_logging, "set_tqdm_hook"):
        hf_logging.set_tqdm_hook(hook)


@main.command()
@click.argument("source")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--drop-attn", metavar="SPEC", help=f"Remove the attention sublayer of these layers. {SPEC_HELP}")
@click.option(
    "--drop-mixer",
    metavar="SPEC",
    help="Remove the token mixer of these layers, whatever it is: attention, linear attention, Mamba or "
    "convolution (hybrid families: Qwen3.5, Jamba, LFM2, Falcon-H1, ...).",
)
@click.option("--drop-mlp", metavar="SPEC", help="Remove the MLP sublayer of these layers.")
@click.option("--drop-blocks", metavar="SPEC", help="Remove these whole decoder blocks.")
@click.option("--plan", "plan_file", metavar="FILE", help="A plan file from `skipprune search` (instead of --drop-*).")
@click.option("--keep-last-layer", is_flag=True, help="last:N specs take the N layers just before the final one.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 5GB, 500MB.")
@click.option(
    "--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True
)
@click.option("--revision", help="Hub branch, tag or commit of SOURCE.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only once the new export is complete).")
@click.option(
    "--adaptive-ffn",
    metavar="SETTINGS",
    is_flag=False,
    flag_value="default",
    help="Input-adaptive FFN skipping in the exported model: 'default' or key=value,... with cold_start, "
    "cold_end, sim_threshold, warmup_tokens, max_skips.",
)
@click.option(
    "--format",
    type=click.Choice(formats.OPTIONS),
    default="default",
    show_default=True,
    help="nemotron-nas: NVIDIA's DeciLM layout, which vLLM, SGLang, TensorRT-LLM and llama.cpp serve natively "
    "(llama and mistral sources); it loads in transformers too.",
)
@click.option("--push-to", metavar="REPO_ID", help="Push OUTPUT to the Hub after a successful export.")
@click.option("--private", is_flag=True, help="With --push-to: create the repo as private.")
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Compare logits against the bypassed source (default: on; weights are streamed from disk when the "
    "models do not fit in memory, or placed by --device-map). The source, the structure and the kept bytes are "
    "always checked.",
)
@spread_options()
def export(source, output, push_to, private, verify, **options):
    """Write OUTPUT: a copy of SOURCE (folder or Hub id) without the removed sublayers."""
    from .export.pipeline import export as run_export

    if push_to:
        from .cards.hub import check_push

        check_push(push_to)  # a bad repo id or a missing token fails before the export, not after it
    run_export(source, output, verify_numerics=verify, **options)
    click.echo(output)
    if push_to:
        from .cards.hub import push as run_push

        click.echo(run_push(output, push_to, private=private))


@main.command()
@click.argument("pruned", type=click.Path(exists=True, file_okay=False))
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--text", required=True, metavar="FILE|wikitext2", help="What to heal on (never the scoring text).")
@click.option("--teacher", metavar="SOURCE", help="The model PRUNED was pruned from (for --method distill).")
@click.option("--method", type=click.Choice(["distill", "lm"]), default="distill", show_default=True)
@click.option("--steps", type=click.IntRange(min=0), help="Optimizer steps (default 200).")
@click.option("--tokens", type=click.IntRange(min=0), help="Or: healing tokens (steps = tokens / batch / seq-len).")
@click.option("--lora-rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank (peft).")
@click.option("--full", is_flag=True, help="Train every weight of the decoder blocks instead of LoRA adapters.")
@click.option(
    "--train",
    metavar="last:K,head",
    help="Instead of LoRA: train the last K kept blocks and/or the LM head fully (e.g. last:3,head).",
)
@click.option("--lr", type=float, help="Learning rate (default 2e-4 with LoRA, 2e-5 with --full or --train).")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True)
@click.option(
    "--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per step, over all processes."
)
@click.option(
    "--parallel",
    type=click.Choice(["auto", "ddp", "fsdp2"]),
    default="auto",
    show_default=True,
    help="Under torchrun / accelerate launch: copies (ddp) or shards (fsdp2) of the student; auto: fsdp2 when it "
    "does not fit half a GPU.",
)
@click.option("--score-text", default="bundled", show_default=True, help="Held-out text for the scores.")
@click.option("--eval-every", type=click.IntRange(min=1), help="Also score every N steps (the healing curve).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@spread_options(stream=False)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only once the new folder is complete).")
@click.pass_context
def heal(ctx, pruned, output, full, lora_rank, train, **options):
    """Train the export PRUNED briefly to recover what removal cost; write OUTPUT in the same format.

    On N processes: torchrun --nproc-per-node N -m skipprune heal ... (or accelerate launch)."""
    from .heal import heal as run_heal

    if train and full:
        raise click.UsageError("--train and --full choose what is trained: give one")
    explicit_rank = ctx.get_parameter_source("lora_rank") == click.core.ParameterSource.COMMANDLINE
    if train and explicit_rank:
        raise click.UsageError("--train trains whole weights without LoRA: drop --lora-rank")
    result = run_heal(pruned, output, lora_rank=None if full or train else lora_rank, train=train, **options)
    if result is None:  # another process of a distributed run: the main one reports
        return
    healing = result.record.healing
    click.echo(
        f"held-out perplexity ({healing.score_seq_len}-token windows): "
        + ", ".join(f"{k} {v:.2f}" for k, v in healing.perplexity.items())
    )
    click.echo(output)


@main.command()
@click.argument("model_types", nargs=-1)
@click.option("--json", "json_path", type=OutputFile(), help="Also write the table as JSON.")
def families(model_types, json_path):
    """What can be removed from each decoder family with the installed transformers.

    Per MODEL_TYPE (default: every causal LM transformers knows, about ten minutes), each family studied on a tiny
    random instance of its default config: whole blocks, attention, MLP, and the serving format. In a hybrid
    family "attention" is each block's token mixer (attention, linear attention, Mamba, convolution): the last
    column names them. Every export is verified anyway; this tells beforehand."""
    import json

    from tqdm.auto import tqdm
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from .errors import PlanError
    from .export.support import support
    from .families import close_model_type

    for t in model_types:
        if t not in CONFIG_MAPPING and (near := close_model_type(t)):
            raise PlanError(f"unknown model type {t!r}: did you mean {near!r}? (`skipprune families` lists them all)")
    types = model_types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    table = {t: support(t) for t in tqdm(types, desc="families", disable=None, leave=False)}
    width = max(len("model type"), *(len(t) for t in types))
    click.echo(f"{'model type':<{width}}  blocks  attention  MLP  serving")
    for t, row in table.items():
        cells = ["yes" if row[k] == "yes" else "no" for k in ("blocks", "attention", "mlp", "serving")]
        reason = next((row[k] for k in ("blocks", "attention", "mlp", "serving") if row[k] != "yes"), "")
        if row["mixers"] not in ("", "attention"):  # a hybrid: what --drop-mixer removes
            reason = f"token mixers: {row['mixers']}" + (f"; {reason}" if reason else "")
        click.echo(f"{t:<{width}}  {cells[0]:<6}  {cells[1]:<9}  {cells[2]:<3}  {cells[3]:<7}  {reason}".rstrip())
    if json_path:
        Path(json_path).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--results",
    "results_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A results JSON from `skipprune eval --json`, checked, then saved into OUTPUT as results.json.",
)
def card(output, results_path):
    """(Re)write OUTPUT/README.md (and layers.png) from its skipprune.json and results."""
    from .cards.card import write_card
    from .records import RESULTS_FILE, ExportRecord, Results

    folder = Path(output)
    record = ExportRecord.load(folder)  # both records are checked before the folder is touched
    results_file = Path(results_path) if results_path else folder / RESULTS_FILE
    results = Results.load(results_file) if results_file.is_file() else None
    if results_path:
        results.save(folder / RESULTS_FILE)
    click.echo(write_card(folder, record, results))


@main.command()
@click.argument("export_folder", metavar="EXPORT")
@click.option("--source", metavar="SOURCE", help="Check against this source (folder or Hub id), bypassed, instead.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run EXPORT's code files to check against, even where they are not a skipprune release's.",
)
@click.option("--push", "push_to", metavar="REPO_ID", help="Then upload EXPORT to the Hub as REPO_ID.")
@click.option("--private", is_flag=True, help="With --push: create the repo as private.")
def refresh(export_folder, source, trust_remote_code, push_to, private):
    """Rewrite EXPORT's code files (and only those) to this skipprune's, so that it runs under the transformers
    releases this skipprune supports; its logits are checked to be unchanged first, and skipprune.json records it."""
    from .export.refresh import refresh as run_refresh

    if push_to:
        from .cards.hub import check_push

        check_push(push_to)
    result = run_refresh(export_folder, source=source, trust_remote_code=trust_remote_code)
    click.echo(result.message)
    if push_to:
        from .cards.hub import push as run_push

        click.echo(run_push(result.folder, push_to, private=private, commit_message="skipprune refresh"))


@main.command()
@click.argument("export_folder", metavar="EXPORT")
@click.argument("out", metavar="OUT.gguf")
@click.option(
    "--outtype",
    type=click.Choice(["f32", "f16", "bf16", "q8_0"]),
    default="f16",
    show_default=True,
    help="Tensor type of the GGUF, as llama.cpp's converter names it.",
)
@click.option(
    "--converter",
    metavar="DIR",
    help="A llama.cpp tree (its convert_hf_to_gguf.py and conversion/); default: $SKIPPRUNE_LLAMA_CPP, or the "
    "one tests/engines/llama_cpp.sh unpacks.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT.gguf if it exists (only once the new file is complete).")
def gguf(export_folder, out, outtype, converter, overwrite):
    """Write EXPORT as a GGUF file for llama.cpp, Ollama and LM Studio, with llama.cpp's own converter: a
    --format nemotron-nas export or a whole-block one, whatever its tokenizer (SentencePiece, byte-fallback BPE,
    GPT-2-style byte-level BPE)."""
    from .export.gguf import to_gguf

    click.echo(to_gguf(export_folder, out, outtype, converter, overwrite))


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--revision", metavar="BRANCH", help="Push to this branch (created if needed).")
@click.option("--commit-message", metavar="MSG")
def push(output, repo_id, private, revision, commit_message):
    """Upload OUTPUT to the Hugging Face Hub as REPO_ID (token: HF_TOKEN or `hf auth login`)."""
    from .cards.hub import push as run_push

    click.echo(run_push(output, repo_id, private, revision, commit_message))


@main.command("eval")
@click.argument("model")
@click.option("--baseline", metavar="SOURCE", help="Measure this model too, in the same run, and report ratios.")
@text_option
@click.option(
    "--seq-len", type=click.IntRange(min=2), help="Perplexity window (default: min(2048, the model's maximum))."
)
@tasks_options
@speed_option
@device_option
@spread_options()
@json_option
@trust_option
def eval_(
    model, baseline, text, seq_len, tasks, limit, speed, device, device_map, max_memory, json_path, trust_remote_code
):
    """Measure MODEL (folder or Hub id): perplexity, size, KV cache, speed, and lm-eval tasks when asked."""
    from .measure.evaluate import evaluate, table

    results = evaluate(
        model,
        baseline,
        text=text,
        seq_len=seq_len,
        speed=speed,
        device=device,
        trust_remote_code=trust_remote_code,
        tasks=_task_list(tasks),
        limit=limit,
        device_map=device_map,
        max_memory=max_memory,
    )
    click.echo(table(results))
    _write_json(json_path, results.to_dict())


@main.command()
@click.argument("model")
@text_option
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True, help="Tokens per window.")
@device_option
@spread_options()
@json_option
@plot_option
@click.option("--suggest", "target", metavar="TARGET", help="Suggest plans removing attn:P%, kv:P% or params:P%.")
@trust_option
def analyze(
    model, text, samples, seq_len, device, device_map, max_memory, json_path, plot_path, target, trust_remote_code
):
    """Measure how much each layer's attention, MLP and block change the residual stream, on MODEL's
    calibration text; optionally suggest which layers to remove."""
    from .measure.evaluate import analyze as run_analyze
    from .prune.suggest import parse_target, suggest

    if target:
        parse_target(target)  # a bad target fails before any model is loaded
    result = run_analyze(model, text, samples, seq_len, device, trust_remote_code, device_map, max_memory)
    imp = result.importance
    click.echo(_importance_table(imp))
    data = imp.to_dict()
    if target:
        data["suggestions"] = []
        for s in suggest(imp, target, result.block_params, result.total_params):
            noun = "token mixer" if imp.mixers else "attention"
            if refusal := result.refusal(s.plan):  # a hybrid that must keep attention somewhere, ...
                click.echo(f"\n[{s.strategy}] {s.why}\n  {s.plan.describe(noun)}\n  not possible here: {refusal}")
                data["suggestions"].append({"strategy": s.strategy, "why": s.why, "refused": refusal})
                continue
            command = s.command(model, mixers=imp.mixers)
            click.echo(f"\n[{s.strategy}] {s.why}\n  {s.plan.describe(noun)}\n  {command}")
            data["suggestions"].append(
                {"strategy": s.strategy, "why": s.why, "plan": s.plan.to_dict(), "command": command}
            )
        click.echo(
            f"\n(one-shot guesses from cosines; for a plan chosen by measuring the model: skipprune search {model} "
            f"--budget {target})"
        )
    _write_json(json_path, data)
    if plot_path:
        from .measure.plots import plot_importance
        from .measure.text import text_name

        click.echo(f"plot written to {plot_importance(imp, plot_path, Path(model).name, text_name(text))}", err=True)


def _importance_table(imp) -> str:
    start, end = imp.cold_regions()
    n = len(imp.block_cos)
    lines = [f"{'layer':>5} {'attn cos':>9} {'mlp cos':>9} {'block cos':>9} {'BI':>7} {'ang(l,l+1)':>10}  note"]
    for i in range(n):
        note = "FFN cold" if i < start or i >= n - end else ""
        lines.append(
            f"{i:>5} {imp.attention_cos[i]:>9.4f} {imp.mlp_cos[i]:>9.4f} {imp.block_cos[i]:>9.4f} "
            f"{imp.block_influence[i]:>7.4f} {imp.angular[1][i]:>10.4f}  {note}"
        )
    lines.append(f"({imp.tokens:,} calibration tokens; FFN cold regions: first {start}, last {end} layers)")
    return "\n".join(lines)


@main.command()
@click.argument("model")
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    required=True,
    metavar="SPEC",
    help="What to remove, all met: params:P%, attn:P% (= kv:P%), mlp:P%, latency:P%, blocks:N (repeat or comma).",
)
@click.option(
    "--kinds",
    metavar="LIST",
    help="Candidates: attention, mlp, block (default: attention for attn budgets, mlp for mlp budgets, else all).",
)
@click.option("--keep", metavar="LAYERS", help="Never touch these source layers: first:N, last:N, indices, ranges.")
@click.option(
    "--objective",
    type=click.Choice(["kl", "perplexity"]),
    default="kl",
    show_default=True,
    help="kl: divergence from the source's next-token distribution; perplexity: next-token loss.",
)
@click.option("--text", metavar="FILE", help="Calibration text: a file, 'bundled' (default) or 'wikitext2'.")
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True, help="Tokens per window.")
@click.option("--eval-text", metavar="FILE", help="Held-out text: score the plan against one-shot strategies on it.")
@click.option("--eval-samples", type=click.IntRange(min=1), help="Held-out windows (default: the whole text).")
@click.option("--eval-seq-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option(
    "--format",
    type=click.Choice(formats.OPTIONS),
    default="default",
    show_default=True,
    help="nemotron-nas: propose only what the serving engines run, counting the stand-in FFNs' cost.",
)
@click.option("--swap/--no-swap", default=True, show_default=True, help="After greedy, exchange units while it helps.")
@click.option(
    "--screen",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Measure every candidate on 2 windows, then the best K on all (0: every one on all windows).",
)
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=1024, show_default=True, help="latency: prompt.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="latency: prompts per batch.")
@device_option
@spread_options()
@click.option("--out", "out_path", type=OutputFile(), default="plan.json", show_default=True, help="The plan file.")
@plot_option
@trust_option
def search(model, budgets, out_path, plot_path, device_map, max_memory, **options):
    """Find which sublayers of MODEL to remove for a budget by measuring candidates on calibration text; write a
    plan file for `skipprune export MODEL OUTPUT --plan FILE`."""
    from .cards.card import search_table
    from .measure.planning import search as run_search
    from .prune.budget import parse_budgets, parse_keep, parse_kinds

    parse_budgets(budgets)  # bad specs fail before any model is loaded
    parse_kinds(options["kinds"])
    if options["keep"]:
        parse_keep(options["keep"], 10**6)
    result = run_search(model, list(budgets), device_map=device_map, max_memory=max_memory, **options)
    record = result.record.search
    click.echo(f"{result.plan.describe()}\nobjective ({record.objective}): {record.objective_value:.5f} per token")
    if record.comparison:
        click.echo("\n" + search_table(record))
    result.save(out_path)
    click.echo(f"\nplan written to {out_path}; export it with\n  skipprune export {model} OUTPUT --plan {out_path}")
    if plot_path:
        from .cards.searchplot import write_search_png

        click.echo(f"plot written to {write_search_png(record, plot_path, Path(model).name)}", err=True)


@main.command()
@click.argument("model")
@text_option
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True, help="Windows per grid point.")
@tasks_options
@speed_option
@device_option
@spread_options()
@json_option
@plot_option
@trust_option
def sweep(
    model,
    text,
    seq_len,
    samples,
    tasks,
    limit,
    speed,
    device,
    device_map,
    max_memory,
    json_path,
    plot_path,
    trust_remote_code,
):
    """The seed paper's grid on MODEL, in memory: attention / MLP / blocks removed from the last layers."""
    from .measure.evaluate import sweep as run_sweep
    from .measure.sweep import rows_to_json, tables

    rows = run_sweep(
        model,
        text,
        seq_len,
        samples,
        _task_list(tasks),
        limit,
        speed,
        device,
        trust_remote_code,
        device_map,
        max_memory,
    )
    click.echo(tables(rows))
    _write_json(json_path, rows_to_json(rows))
    if plot_path:
        from .measure.plots import plot_sweep

        click.echo(f"plot written to {plot_sweep(rows, plot_path, Path(model).name)}", err=True)


@main.command()
@click.argument("output", type=click.Path(file_okay=False), default="skipprune-demo")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT even if it is not an earlier demo output.")
def demo(output, overwrite):
    """Run the whole job on the bundled demo model: export, measure, card, load back, generate."""
    from .demo import run_demo

    click.echo(run_demo(output, overwrite=overwrite))


if __name__ == "__main__":
    main()
