"""WHAT it cost: loading models to measure them, perplexity, speed, lm-eval tasks, per-layer importance and
the seed paper's grid; one evaluate() behind eval and the demo."""
