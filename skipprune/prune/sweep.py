"""The seed paper's grid, in memory: attention, MLP or whole blocks removed from the last layers, keeping
100 / 90 / 75 / 66 % of them, with and without keeping the final layer (Tyukin et al. 2024, Tables 1-3, 7).

Sublayers are removed in place with the very stubs the exported modeling file uses (one definition of
"removed"), so perplexity equals that of the export, and speed reflects the work actually skipped; the
model is restored after each point. Latency: at each point the full and the pruned model take turns.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..cards import scores
from ..export.remote.modeling_skipprune import _remove
from .families import Family
from .plan import PrunePlan

KEEP = (100, 90, 75, 66)
KINDS = ("attention", "mlp", "blocks")


@contextmanager
def removed_in_place(model, plan: PrunePlan, family: Family):
    """Within the block, `model` computes what the export of `plan` computes. A removed block keeps its slot
    with both sublayers stubbed (the residual passes through unchanged), so per-layer config lists stay valid."""
    saved = []
    for i, layer in enumerate(model.model.layers):
        for names, gone, is_attn in ((family.attention, plan.drop_attention, True), (family.mlp, plan.drop_mlp, False)):
            if i in gone:
                saved += [(layer, n, getattr(layer, n)) for n in names]
                _remove(layer, list(names), returns_attention_weights=is_attn)
    try:
        yield model
    finally:
        for layer, name, module in saved:
            setattr(layer, name, module)


def grid(num_layers: int) -> list[tuple[str, int, bool, PrunePlan | None]]:
    points: list[tuple[str, int, bool, PrunePlan | None]] = [("none", 100, False, None)]
    for kind in KINDS:
        for keep in KEEP[1:]:
            for keep_last in (False, True):
                spec = f"last:{100 - keep}%"
                key = {"attention": "drop_attn", "mlp": "drop_mlp", "blocks": "drop_blocks"}[kind]
                points.append((kind, keep, keep_last, PrunePlan.from_specs(num_layers, keep_last_layer=keep_last, **{key: spec})))
    return points


def run_sweep(model, family: Family, ids, seq_len: int, text_name: str, speed: bool = True, tasks=None, tokenizer=None,
              limit=None, log=print) -> list[dict]:  # fmt: skip
    import torch

    n = len(model.model.layers)
    rows = []
    prompts = scores.prompt_batch(model, 8, 50)
    for kind, keep, keep_last, plan in grid(n):
        label = "full model" if plan is None else f"{kind} kept {keep}%{' +last' if keep_last else ''}"
        log(f"  {label} ...")
        plan = plan or PrunePlan(n)
        with torch.no_grad(), removed_in_place(model, plan, family):
            ppl, protocol = scores.perplexity(model, ids, seq_len, text_name)
            task_scores = {}
            if tasks:
                from ..cards.tasks import run_tasks

                task_scores = {t: r["value"] for t, r in run_tasks(model, tokenizer, tasks, limit).items()}
        latency = base_latency = None
        if speed:  # full and pruned take turns at every point, so each ratio compares like with like

            def pruned(plan=plan):
                with removed_in_place(model, plan, family):
                    scores.predict_one_token(model, prompts)

            base_latency, latency = scores.alternating_medians([lambda: scores.predict_one_token(model, prompts), pruned])
        rows.append({
            "kind": kind, "kept_percent": keep, "keep_last_layer": keep_last,
            "removed_layers": [] if plan is None else sorted(plan.drop_attention | plan.drop_mlp),
            "perplexity": ppl, "one_token_s_batch8_len50": latency,
            "latency_ratio": latency / base_latency if latency and base_latency else None, "tasks": task_scores,
            "full_model_one_token_s": base_latency,
        })  # fmt: skip
    rows[0]["perplexity_protocol"] = protocol
    return rows


def sweep(model_ref: str, text: str | None = None, seq_len: int = 256, samples: int = 32, tasks=None, limit=None,
          speed: bool = True, device: str = "auto", trust_remote_code: bool = False, log=print) -> list[dict]:  # fmt: skip
    """Load a stock model and run the grid on `samples` windows of `text` (the bundled held-out text by default)."""
    import torch

    from ..cards.evaluate import pick_device, read_text
    from .report import load_stock

    content, name = read_text(text)
    model, tokenizer, family = load_stock(model_ref, pick_device(device), trust_remote_code)
    ids = torch.tensor(tokenizer(content)["input_ids"])[: samples * seq_len]
    log(f"sweeping {len(grid(len(model.model.layers)))} grid points ...")
    return run_sweep(model, family, ids, seq_len, name, speed, tasks, tokenizer, limit, log)


def tables(rows: list[dict]) -> str:
    """One table per kind, laid out like the paper's: kept %, then without / with the final layer kept."""
    base = rows[0]
    out = []
    for kind in KINDS:
        out.append(f"\n{kind} removed from the last layers")
        out.append(f"{'kept':>6} {'layers removed':>18} {'ppl':>9} {'ppl (+last)':>12} {'latency':>8} {'lat (+last)':>12}")
        out.append(f"{'100%':>6} {'-':>18} {base['perplexity']:>9.2f} {base['perplexity']:>12.2f} {'1.000':>8} {'1.000':>12}")
        for keep in KEEP[1:]:
            a, b = (next(r for r in rows if r["kind"] == kind and r["kept_percent"] == keep and r["keep_last_layer"] == k)
                    for k in (False, True))  # fmt: skip

            def lat(r):
                return f"{r['latency_ratio']:.3f}" if r["latency_ratio"] else "-"

            removed = ",".join(map(str, a["removed_layers"]))
            out.append(f"{keep:>5}% {removed:>18} {a['perplexity']:>9.2f} {b['perplexity']:>12.2f} {lat(a):>8} {lat(b):>12}")
    return "\n".join(out)


def plot(rows: list[dict], path, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import SkippruneError

        raise SkippruneError("--plot needs matplotlib: pip install 'skipprune[plot]'") from None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    base = rows[0]
    for kind, color in zip(KINDS, ("tab:blue", "tab:orange", "tab:green")):
        for keep_last, style in ((False, "-o"), (True, "--s")):
            pts = [(100, base["perplexity"], 1.0)] + [
                (r["kept_percent"], r["perplexity"], r["latency_ratio"]) for r in rows
                if r["kind"] == kind and r["keep_last_layer"] == keep_last
            ]  # fmt: skip
            label = f"{kind}{' (final layer kept)' if keep_last else ''}"
            a.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label)
            if all(p[2] for p in pts):
                b.plot([p[0] for p in pts], [p[2] for p in pts], style, color=color, label=label)
    a.set(xlabel="% of layers keeping the sublayer", ylabel="perplexity", yscale="log")
    a.invert_xaxis()
    a.legend(fontsize=7)
    b.set(xlabel="% of layers keeping the sublayer", ylabel="1-token latency / full model")
    b.invert_xaxis()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
