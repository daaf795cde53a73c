"""Where accelerate puts a model whose weights stay on disk: one entry per decoder block, so that a block's
weights are read when it runs and dropped after it (and held across many calls by measure/stream.py).

accelerate's own "auto" map under a tiny memory budget puts everything on disk and then merges the entries
into one (`{"": "disk"}`): the whole model is then read at every forward. Hence this map, written from the
model's structure built on the meta device.
"""

from __future__ import annotations

from pathlib import Path

from ..families.discover import locate_blocks


def streaming_map(folder: Path, trust_remote_code: bool = False) -> dict[str, str | int]:
    """device_map for the model in `folder`: every decoder block and every module beside the path to them on
    disk, each its own entry; on a machine with a GPU, the modules outside the blocks (embeddings, norm, head)
    on GPU 0, which makes it the device the offloaded blocks run on."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    path, blocks = locate_blocks(model)
    outside: str | int = 0 if torch.cuda.is_available() else "disk"
    out: dict[str, str | int] = {}
    node, prefix = model, ""
    for part in path.split("."):
        if any(True for _ in node.parameters(recurse=False)):
            return {"": outside}  # weights held by a module on the path itself: nothing to split (not seen)
        out.update({prefix + name: outside for name, _ in node.named_children() if name != part})
        node, prefix = getattr(node, part), f"{prefix}{part}."
    out.update({f"{prefix}{i}": "disk" for i in range(len(blocks))})
    return out
