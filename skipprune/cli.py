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
            click.echo("interrupted; nothing was written to OUTPUT", err=True)
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
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Compare logits against the bypassed source (default: when the model fits in memory). "
    "Structure and bytes are always verified.",
)
def export(source, output, drop_attn, drop_mlp, drop_blocks, keep_last_layer, max_shard_size, dtype, revision, overwrite, verify):
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
        log=lambda msg: click.echo(msg, err=True),
        command=shlex.join(["skipprune", *sys.argv[1:]]) if sys.argv[1:2] == ["export"] else None,
    )
    click.echo(output)


@main.command()
@click.argument("output", type=click.Path(file_okay=False), default="skipprune-demo")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT even if it is not an earlier demo output.")
def demo(output, overwrite):
    """Run the whole job on the bundled demo model: export, measure, card, load back, generate."""
    from .demo import run_demo

    run_demo(output, overwrite=overwrite, log=click.echo)


if __name__ == "__main__":
    main()
