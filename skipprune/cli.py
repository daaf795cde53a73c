"""The `skipprune` command: a thin shell over the Python API.

Errors a user can fix are printed as one line (`error: ...`) with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import shlex
import sys

import click

from .errors import SkippruneError

SPEC_HELP = "SPEC: last:N, last:P% or indices/ranges like 20-31,5 (0-based, source numbering)"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SkippruneError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted (an unfinished export leaves no OUTPUT behind)", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="skipprune")
def main():
    """Physically delete attention sublayers, MLP sublayers or whole blocks from a Hugging Face causal LM."""


@main.command()
@click.argument("source")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--drop-attn", metavar="SPEC", help=f"Remove the attention sublayer of these layers. {SPEC_HELP}")
@click.option("--drop-mlp", metavar="SPEC", help="Remove the MLP sublayer of these layers.")
@click.option("--drop-blocks", metavar="SPEC", help="Remove these whole decoder blocks.")
@click.option("--keep-last-layer", is_flag=True, help="last:N specs take the N layers just before the final one.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 5GB, 500MB.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True)
@click.option("--revision", help="Hub branch, tag or commit of SOURCE.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only once the new export is complete).")
@click.option("--adaptive-ffn", metavar="SETTINGS", is_flag=False, flag_value="default",
              help="Input-adaptive FFN skipping in the exported model: 'default' or key=value,... with cold_start, "
              "cold_end, sim_threshold, warmup_tokens, max_skips.")  # fmt: skip
@click.option("--push-to", metavar="REPO_ID", help="Push OUTPUT to the Hub after a successful export.")
@click.option("--private", is_flag=True, help="With --push-to: create the repo as private.")
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Compare logits against the bypassed source (default: when the model fits in memory). "
    "Structure and bytes are always verified.",
)
def export(source, output, drop_attn, drop_mlp, drop_blocks, keep_last_layer, max_shard_size, dtype, revision, overwrite,
           adaptive_ffn, push_to, private, verify):  # fmt: skip
    """Write OUTPUT: a copy of SOURCE (folder or Hub id) without the removed sublayers."""
    from .export.pipeline import export as run_export

    run_export(
        source,
        output,
        drop_attn=drop_attn,
        drop_mlp=drop_mlp,
        drop_blocks=drop_blocks,
        keep_last_layer=keep_last_layer,
        max_shard_size=max_shard_size,
        dtype=dtype,
        revision=revision,
        overwrite=overwrite,
        verify_numerics=verify,
        adaptive_ffn=adaptive_ffn,
        log=lambda msg: click.echo(msg, err=True),
        command=shlex.join(["skipprune", *sys.argv[1:]]) if sys.argv[1:2] == ["export"] else None,
    )
    click.echo(output)
    if push_to:
        from .cards.hub import push as run_push

        click.echo(run_push(output, push_to, private=private, log=lambda m: click.echo(m, err=True)))


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--results", "results_path", type=click.Path(exists=True, dir_okay=False),
              help="A results JSON from `skipprune eval --json`, copied into OUTPUT as results.json.")  # fmt: skip
def card(output, results_path):
    """(Re)write OUTPUT/README.md (and layers.png) from its skipprune.json and results."""
    import shutil
    from pathlib import Path

    from .cards.card import load_records, write_card

    load_records(Path(output))  # a clear error before anything is copied in
    if results_path:
        shutil.copyfile(results_path, Path(output) / "results.json")
    click.echo(write_card(Path(output)))


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--revision", metavar="BRANCH", help="Push to this branch (created if needed).")
@click.option("--commit-message", metavar="MSG")
def push(output, repo_id, private, revision, commit_message):
    """Upload OUTPUT to the Hugging Face Hub as REPO_ID (token: HF_TOKEN or `hf auth login`)."""
    from .cards.hub import push as run_push

    click.echo(run_push(output, repo_id, private, revision, commit_message, log=lambda m: click.echo(m, err=True)))


@main.command("eval")
@click.argument("model")
@click.option("--baseline", metavar="SOURCE", help="Measure this model too, in the same run, and report ratios.")
@click.option("--text", metavar="FILE", help="Perplexity text: a file, 'bundled' (default) or 'wikitext2'.")
@click.option("--seq-len", type=int, help="Perplexity window (default: min(2048, the model's maximum)).")
@click.option("--tasks", metavar="LIST", help="lm-eval tasks, comma separated: names or task YAML paths.")
@click.option("--limit", type=int, help="At most this many examples per task (quick runs).")
@click.option("--speed/--no-speed", default=True, show_default=True, help="Measure 1-token latency and decode speed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results JSON here.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the models' own code (an export's own is always allowed).")
def eval_(model, baseline, text, seq_len, tasks, limit, speed, device, json_path, trust_remote_code):
    """Measure MODEL (folder or Hub id): perplexity, size, KV cache, speed, and lm-eval tasks when asked."""
    import json

    from .cards.evaluate import evaluate, table

    res = evaluate(
        model, baseline, text=text, seq_len=seq_len, speed=speed, device=device, trust_remote_code=trust_remote_code,
        tasks=[t for t in (tasks or "").split(",") if t], limit=limit, log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(table(res))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        click.echo(f"results written to {json_path}", err=True)


@main.command()
@click.argument("model")
@click.option("--text", metavar="FILE", help="Calibration text: a file, 'bundled' (default) or 'wikitext2'.")
@click.option("--samples", type=int, default=32, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, default=256, show_default=True, help="Tokens per window.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the measurements here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG plot here (needs matplotlib).")
@click.option("--suggest", "target", metavar="TARGET", help="Suggest plans removing attn:P%, kv:P% or params:P%.")
@click.option("--trust-remote-code", is_flag=True)
def analyze(model, text, samples, seq_len, device, json_path, plot_path, target, trust_remote_code):
    """Measure how much each layer's attention, MLP and block change the residual stream, on MODEL's
    calibration text; optionally suggest which layers to remove."""
    import json
    from pathlib import Path

    from .prune import report

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if target:
        from .prune.analyze import parse_target

        parse_target(target)  # a bad target fails before any model is loaded
    imp, loaded = report.analyze(model, text, samples, seq_len, device, trust_remote_code, log)
    click.echo(report.table(imp))
    data = imp.to_dict()
    if target:
        per_block, total = report.block_params(loaded)
        data["suggestions"] = []
        for s in report.suggest(imp, target, per_block, total):
            click.echo(f"\n[{s.strategy}] {s.why}\n  {s.plan.describe()}\n  {s.command(model)}")
            data["suggestions"].append({"strategy": s.strategy, "why": s.why, "plan": s.plan.to_dict(), "command": s.command(model)})
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if plot_path:
        log(f"plot written to {report.plot(imp, Path(plot_path), Path(model).name)}")


@main.command()
@click.argument("model")
@click.option("--text", metavar="FILE", help="Perplexity text: a file, 'bundled' (default) or 'wikitext2'.")
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--samples", type=int, default=32, show_default=True, help="Perplexity windows per grid point.")
@click.option("--tasks", metavar="LIST", help="lm-eval tasks per grid point (slow; use --limit).")
@click.option("--limit", type=int)
@click.option("--speed/--no-speed", default=True, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False))
@click.option("--trust-remote-code", is_flag=True)
def sweep(model, text, seq_len, samples, tasks, limit, speed, device, json_path, plot_path, trust_remote_code):
    """The seed paper's grid on MODEL, in memory: attention / MLP / blocks removed from the last layers."""
    import json
    from pathlib import Path

    from .prune import sweep as sw

    rows = sw.sweep(model, text, seq_len, samples, [t for t in (tasks or "").split(",") if t], limit, speed, device,
                    trust_remote_code, log=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(sw.tables(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    if plot_path:
        click.echo(f"plot written to {sw.plot(rows, Path(plot_path), Path(model).name)}", err=True)


@main.command()
@click.argument("output", type=click.Path(file_okay=False), default="skipprune-demo")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT even if it is not an earlier demo output.")
def demo(output, overwrite):
    """Run the whole job on the bundled demo model: export, measure, card, load back, generate."""
    from .demo import run_demo

    run_demo(output, overwrite=overwrite, log=click.echo)


if __name__ == "__main__":
    main()
