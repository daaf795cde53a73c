"""The `skipprune` command's entry point, outside the package on purpose: importing `skipprune` takes about half a
second (numpy, huggingface_hub, transformers' lazy modules), and a SIGTERM in that time must already end the
command the way it ends any other moment of it (exit status 143, nothing left behind), not kill it unhandled.
"""

import signal
import sys


def main():
    # SIGTERM unwinds like Ctrl-C, so whatever is half-written is removed on the way out (exit status 143).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from skipprune.cli import main as cli

    return cli()
