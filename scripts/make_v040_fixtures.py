"""Write the exports that tests/test_compat.py loads: tiny models exported by skipprune 0.4.0 (commit 214e092)
under transformers 5.24.0, the last release it worked with, and what they computed there.

    git worktree add /tmp/v040 214e092
    python -m venv /tmp/v524 && /tmp/v524/bin/pip install torch==2.13.0 -e /tmp/v040 transformers==5.24.0
    PYTHONPATH=/tmp/v040:tests /tmp/v524/bin/python scripts/make_v040_fixtures.py tests/data/v0.4.0

Each fixture folder is the export as written, less its card figure; `reference.safetensors` beside it holds a
padded batch, its logits and the greedy continuation of its first row, computed with the export's own code.
"""

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

import skipprune
from skipprune.export.anatomy import shrink
from skipprune.prune.plan import PrunePlan

from tiny import make_model

SMALL_LINEAR = {
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}
FIXTURES = {
    # name: (family, toy overrides, plan (layers, attention, mlp), format)
    "llama-attn0": ("llama", {}, (6, {0, 3}, {4}), "default"),
    "qwen2-sliding": ("qwen2", {}, (6, {0, 4, 5}, {2, 5}), "default"),
    "qwen3_5_text-hybrid": ("qwen3_5_text", SMALL_LINEAR, (4, {0, 2}, {1}), "default"),
    "llama-nas": ("llama", {"intermediate_size": 256}, (6, {1, 3}, {2, 3}), "nemotron-nas"),
}


def hybrid_source(folder: Path, model_type: str, overrides: dict) -> Path:
    config = shrink(AutoConfig.for_model(model_type).to_dict(), 4) | overrides
    config.pop("model_type", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


def main(root: Path) -> None:
    work = root / ".sources"
    for name, (family, overrides, (n, attention, mlp), fmt) in FIXTURES.items():
        src = work / name
        if n == 4:
            hybrid_source(src, family, overrides)
        else:
            make_model(src, family, **overrides)
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        skipprune.export(src, out, PrunePlan(n, attention, mlp), format=fmt)
        (out / "layers.png").unlink(missing_ok=True)
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = torch.randint(3, min(vocab, 120), (2, 10), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            greedy = model.generate(ids[:1, :6], max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=False)
        save_file(
            {"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(), "greedy": greedy},
            root / f"{name}.reference.safetensors",
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
