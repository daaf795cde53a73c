"""layers.png: which sublayers of each SOURCE layer were kept, drawn for the model card's Hub page.

Two rows (attention, MLP), one column per source layer: green kept, red removed, grey hatched where the whole
block was removed. Drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

from ..prune.plan import PrunePlan

# Okabe-Ito blue and orange: told apart with every common colour-vision deficiency (red/green is not)
KEPT, REMOVED, BLOCK = "#0072b2", "#e69f00", "#9e9e9e"


def layer_colors(plan: PrunePlan) -> list[tuple[str, str]]:
    """(attention colour, MLP colour) per source layer."""
    rows = []
    for i in range(plan.num_layers):
        if i in plan.dropped_blocks:
            rows.append((BLOCK, BLOCK))
        else:
            rows.append((REMOVED if i in plan.drop_attention else KEPT, REMOVED if i in plan.drop_mlp else KEPT))
    return rows


def write_layers_png(plan: PrunePlan, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = layers_figure(plan, title)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def layers_figure(plan: PrunePlan, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = plan.num_layers
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.28 * n + 2)), 2.6))
    blocks = set(plan.dropped_blocks)
    for i, colors in enumerate(layer_colors(plan)):
        for row, color in enumerate(colors):
            ax.add_patch(
                matplotlib.patches.Rectangle(
                    (i - 0.45, 1 - row - 0.4),
                    0.9,
                    0.8,
                    facecolor=color,
                    edgecolor="white",
                    hatch="///" if i in blocks else None,
                )
            )
    step = 1 if n <= 32 else 2 if n <= 64 else 4
    ax.set_xticks(range(0, n, step))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([1, 0], ["attention", "MLP"])
    ax.set_xlabel("source layer (0-based)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    attn = len(plan.drop_attention - plan.drop_mlp)
    mlp = len(plan.drop_mlp - plan.drop_attention)
    ax.set_title(
        f"{title}: {plan.kept_phrase()}; attention removed in {attn}, MLP in {mlp}, whole blocks {len(blocks)}",
        fontsize=10,
    )
    legend = [
        Patch(facecolor=KEPT, label="kept"),
        Patch(facecolor=REMOVED, label="removed"),
        Patch(facecolor=BLOCK, hatch="///", label="whole block removed"),
    ]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
