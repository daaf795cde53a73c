"""Every causal-LM model type of the installed transformers through skipprune, as a new user would try it.

For each type: the family study (`skipprune families`, timed), then a tiny random model of the family's
default config (shrunk as the tests shrink it, norms randomised) exported twice, each export verified end to
end: without block 1 (or the last block, where the family places its kinds of block by position and block 1
is refused), and without the token mixer of the first layer of each mixer kind plus the MLP of another layer.
Given model types, it updates those rows of an existing table. Each cell is "yes" or the one-line reason skipprune gave. Writes benchmarks/families.json and
prints the counts that README.md's "Supported families" quotes.

    python benchmarks/families_matrix.py [MODEL_TYPE ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path

N = 4  # toy layers


def tiny_source(folder: Path, model_type: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from skipprune.families.toy import shrink

    config = shrink(AutoConfig.for_model(model_type).to_dict(), N)
    config.pop("model_type", None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    with torch.no_grad():  # default norms are all ones or zeros: randomise so that a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


def sublayer_plan(family):
    from skipprune.prune.plan import PrunePlan

    mixers = [family.at(i).mixer for i in range(N)]
    firsts = {mixers.index(m) for m in set(mixers)}
    rest = sorted(set(range(N)) - firsts)
    return PrunePlan(N, firsts, {rest[0]} if rest else set())


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def try_export(src: Path, out: Path, plan) -> str:
    import skipprune
    from skipprune.errors import SkippruneError

    signal.alarm(300)
    try:
        skipprune.export(src, out, plan, card=False)
        return "yes"
    except SkippruneError as e:
        return str(e).replace(f"{src.parent}/", "")  # no temporary paths in the table
    except _Timeout:
        return "timed out after 300 s"
    except Exception as e:  # a family's own code failing on its toy: recorded, not fatal
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        signal.alarm(0)


def study(model_type: str) -> dict:
    from skipprune.export.source import read_config
    from skipprune.export.support import support
    from skipprune.families import family_of

    t0 = time.perf_counter()
    row = support(model_type)
    row["study_s"] = round(time.perf_counter() - t0, 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            src = tiny_source(tmp / "src", model_type)
        except Exception as e:
            row["export_blocks"] = row["export_sublayers"] = f"toy not built ({type(e).__name__})"
            return row
        from skipprune.prune.plan import PrunePlan

        row["export_blocks"] = try_export(src, tmp / "blocks", PrunePlan(N, {1}, {1}))
        if "from its position" in row["export_blocks"]:  # Jamba, Llama 4, ...: a block whose removal keeps them
            why = row["export_blocks"]
            if try_export(src, tmp / "last", PrunePlan(N, {N - 1}, {N - 1})) == "yes":
                row["export_blocks"] = f"yes (block {N - 1}; block 1: {why})"
        if row["attention"] == "yes":
            family = family_of(read_config(src, "src"))
            row["export_sublayers"] = try_export(src, tmp / "sub", sublayer_plan(family))
        else:
            row["export_sublayers"] = row["attention"]
    return row


def main() -> None:
    from transformers import __version__
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_types", nargs="*")
    parser.add_argument("--json", default=str(Path(__file__).parent / "families.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    types = args.model_types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    table = {}
    if args.model_types and Path(args.json).exists():  # a rerun of some types updates the table
        table = json.loads(Path(args.json).read_text(encoding="utf-8"))["types"]
    for t in types:
        table[t] = study(t)
        r = table[t]
        print(f"{t:<28} blocks {r['export_blocks'][:50]:<50} sublayers {r['export_sublayers'][:60]}", flush=True)
    blocks = sorted(t for t, r in table.items() if r["export_blocks"].startswith("yes"))
    sub = sorted(t for t, r in table.items() if r["export_sublayers"] == "yes")
    hybrid = sorted(t for t in sub if table[t]["mixers"] not in ("", "attention"))
    studies = sorted(r["study_s"] for r in table.values())
    summary = {
        "transformers": __version__,
        "model_types": len(table),
        "blocks": len(blocks),
        "sublayers": len(sub),
        "hybrid_sublayers": hybrid,
        "median_study_s": studies[len(studies) // 2] if studies else None,
        "max_study_s": studies[-1] if studies else None,
    }
    Path(args.json).write_text(json.dumps({"summary": summary, "types": table}, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
