"""An export as the GGUF file that llama.cpp, Ollama and LM Studio load.

The conversion is llama.cpp's own (`convert_hf_to_gguf.py` of a llama.cpp tree, never copied here), run in a
subprocess by gguf_driver.py, which changes only how it reads vocabularies (see there). It takes a
`--format nemotron-nas` export (DeciLM, llama.cpp's graph for layers without attention or FFN) or a
whole-block export (the stock architecture). The file appears under its name only once complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .. import formats
from ..errors import OutputError, PlanError, SourceError
from ..system import fsync_path

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DRIVER = Path(__file__).with_name("gguf_driver.py")
ENV_TREE = "SKIPPRUNE_LLAMA_CPP"


def find_converter(converter: str | os.PathLike | None = None) -> Path:
    """The llama.cpp tree to convert with: `converter`, else $SKIPPRUNE_LLAMA_CPP, else the one
    `tests/engines/llama_cpp.sh` unpacks under .engines/ (in the current folder or this checkout)."""
    named = converter or os.environ.get(ENV_TREE)
    if named:
        candidates = [Path(named).expanduser()]
    else:
        roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
        candidates = [t for r in roots for t in sorted((r / ".engines").glob("llama_cpp_python-*/vendor/llama.cpp"))]
    for tree in candidates:
        if (tree / "convert_hf_to_gguf.py").is_file() and (tree / "conversion").is_dir():
            return tree
    where = f"{named} is not one" if named else "none was found"
    raise SourceError(
        f"skipprune gguf needs a llama.cpp tree with its converter (convert_hf_to_gguf.py and conversion/) and "
        f"{where}: `git clone https://github.com/ggml-org/llama.cpp` and pass --converter DIR (or set {ENV_TREE}), "
        "or run `bash tests/engines/llama_cpp.sh` in a skipprune checkout"
    )


def check_export(folder: Path) -> dict:
    """The export's config.json, refusing what llama.cpp cannot run."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{folder} has no config.json: give the folder `skipprune export` wrote") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"{folder}/config.json cannot be read ({e}); export the model again") from None
    if "llama.cpp" not in formats.of_config(config).engines:
        raise PlanError(
            f"{folder.name} runs removed sublayers through skipprune's own modeling code, which llama.cpp does not "
            "have: export again with --format nemotron-nas (llama and mistral sources), or remove whole blocks only"
        )
    return config


def to_gguf(
    export: str | os.PathLike,
    out: str | os.PathLike,
    outtype: str = "f16",
    converter: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out` (a .gguf file) from the export folder `export`; `outtype` as llama.cpp names it. An existing
    `out` is replaced only with `overwrite`, and only once the new file is complete."""
    if outtype not in OUTTYPES:
        raise PlanError(f"unknown --outtype {outtype!r}: use {', '.join(OUTTYPES)}")
    folder = Path(export).expanduser()
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder: give the folder `skipprune export` wrote")
    check_export(folder)
    target = Path(out).expanduser().absolute()
    if target.is_dir():
        raise OutputError(f"{target} is a folder: name the .gguf file to write, e.g. {target / 'model.gguf'}")
    if not target.parent.is_dir():
        raise OutputError(f"{target.parent} does not exist: create it first")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} exists: pass --overwrite to replace it, or name another file")
    tree = find_converter(converter)
    tmp = target.with_name(f".{target.name}.skipprune-tmp")
    cmd = [sys.executable, str(DRIVER), str(tree), str(folder), "--outfile", str(tmp), "--outtype", outtype]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SourceError(f"llama.cpp's converter stopped on {folder.name} ({_last_error(proc.stderr)})")
        fsync_path(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _last_error(stderr: str) -> str:
    """The converter's own last word: its exception, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]
