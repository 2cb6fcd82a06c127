"""Figures of an evaluation (matplotlib's object API on the Agg canvas: no pyplot, no display).

grid.png                    images x maps, each map over its image (jet, 50 %), true boxes in white,
                            the largest-segment box (15 % of max) in red
iou_top_vs_least.png        per method, IoU (largest segment) of the predicted class's map against the
                            least likely class's map, one dot per image
curves_<subset>.png         mean deletion and insertion curves per map
sanity.png                  mean Spearman rho per cascade stage per method
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from camserve.eval.evaluate import Example, SubsetResult
from camserve.eval.localisation import largest_component_box
from camserve.eval.sanity import SanityResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORMAP = "jet"
HEATMAP_ALPHA = 0.5


def slug(text: str) -> str:
    """A file-name-safe form: "multi-instance (2-4)" -> "multi-instance_2-4"."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9-]", "_", text.replace("+", "p"))).strip("_")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _box(axes: Axes, box: Sequence[float], colour: str, width: float = 1.2) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 > x0 and y1 > y0:
        # half-open pixel boxes: pixel c spans [c - 0.5, c + 0.5] in imshow's coordinates
        axes.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=width)
        )


def grid_figure(
    examples: Sequence[Example], names: Sequence[str], class_names: Sequence[str], path: Path
) -> Path:
    """Images (rows) x maps (columns): the image with its true boxes, then each map over it."""
    rows, cols = len(examples), len(names) + 1
    fig = Figure(figsize=(1.6 * cols, 1.7 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, ex in enumerate(examples):
        pixels = ex.pixels.permute(1, 2, 0).clamp(0, 1).numpy()
        true_name = class_names[ex.label] if ex.label < len(class_names) else str(ex.label)
        pred_name = class_names[ex.predicted] if ex.predicted < len(class_names) else str(ex.predicted)
        ax = axes[r, 0]
        ax.imshow(pixels, interpolation="nearest")
        for box in ex.boxes.tolist():
            _box(ax, box, "white")
        ax.set_title(f"{true_name} (pred {pred_name})", fontsize=7)
        for c, name in enumerate(names, start=1):
            ax = axes[r, c]
            heat = ex.maps[name]
            ax.imshow(pixels, interpolation="nearest")
            ax.imshow(
                heat.numpy(), cmap=COLORMAP, alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            for box in ex.boxes.tolist():
                _box(ax, box, "white", 0.8)
            _box(ax, largest_component_box(heat[None])[0].tolist(), "red")
            if r == 0:
                ax.set_title(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("maps of the true class; white: true boxes, red: largest segment >= 15 % of max", fontsize=8)
    return _save(fig, path)


def iou_scatter_figure(result: SubsetResult, names: Sequence[str], path: Path) -> Path:
    """Per map, IoU of the top-predicted class's map (x) vs the least likely class's map (y)."""
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols, i % cols]
        x = result.values(name, "iou_component_top").numpy()
        y = result.values(name, "iou_component_least").numpy()
        ax.scatter(x, y, s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: mean {x.mean():.2f} vs {y.mean():.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("IoU, least likely class", fontsize=7)
        if i // cols == rows - 1:
            ax.set_xlabel("IoU, predicted class", fontsize=7)
    for j in range(len(names), rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    fig.suptitle(f"{result.name}: box of the largest segment vs the true box", fontsize=9)
    return _save(fig, path)


def curves_figure(result: SubsetResult, names: Sequence[str], baselines: Sequence[str], path: Path) -> Path:
    """Mean deletion (left) and insertion (right) curves; baselines dashed."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    fractions = result.fractions
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for name in names:
            curve = result.curve(kind, name)
            if curve.numel() == 0 or fractions is None:
                continue
            x, mean = fractions.numpy(), curve.mean(0).numpy()
            auc = float(torch.trapezoid(curve, fractions.to(curve), dim=-1).mean())
            ax.plot(x, mean, label=f"{name} ({auc:.3f})", linestyle="--" if name in baselines else "-")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("probability of the true class")
        ax.set_title(f"{kind} (AUC; {'lower' if kind == 'deletion' else 'higher'} is better)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(result.name, fontsize=9)
    return _save(fig, path)


def sanity_figure(sanity: SanityResult, path: Path) -> Path:
    """Mean Spearman rho between trained and randomised maps after each cascade stage."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    stages = ["trained", *sanity.stages]
    for method in sanity.correlations:
        curve = [1.0, *sanity.mean_curve(method).tolist()]
        ax.plot(range(len(stages)), curve, marker="o", markersize=3, label=method)
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels(stages, rotation=45, ha="right", fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("Spearman rho with the trained model's maps")
    ax.set_xlabel("cascading randomisation, top layer first")
    ax.set_ylim(-0.3, 1.05)
    ax.legend(fontsize=7)
    return _save(fig, path)
