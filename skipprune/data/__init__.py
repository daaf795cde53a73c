"""Bundled data: the demo model (a small Llama trained on Tiny Shakespeare by scripts/train_demo.py) and the
held-out split of the text it never saw in training."""

from pathlib import Path

HERE = Path(__file__).parent
DEMO_MODEL = HERE / "demo-model"
HELDOUT = HERE / "heldout.txt"
HELDOUT_NAME = "the bundled Tiny Shakespeare held-out split (never trained on)"
