"""Pictures of the digits task: ``python -m camserve.default_model.examples OUT.png`` (the scenes
and their boxes), ``... --dense OUT.png`` (the dense model's segmentation and region-target maps),
``... --kinds OUT.png`` (one worked example per output kind and its targets, docs/targets.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import BACKGROUND, DigitCamNet
from camserve.defaults import DENSE_EXAMPLE_METHODS, KINDS_EXAMPLE_METHOD


def save_example_grid(path: str | Path, seed: int = 3, columns: int = 8) -> Path:
    """Test-split images with their boxes: single copies on the top row, 2-4 copies below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [
        make_localisation_dataset(columns, seed=seed, instances=(1, 1), split="test"),
        make_localisation_dataset(columns, seed=seed + 1, instances=(2, 4), split="test"),
    ]
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.8 * len(rows)))
    for row, ds in zip(axes, rows, strict=True):
        for axis, image, label, boxes in zip(row, ds.images, ds.labels, ds.boxes, strict=True):
            axis.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            for x0, y0, x1, y1 in boxes.tolist():
                # Box edges on pixel borders: pixel i spans [i - 0.5, i + 0.5] in imshow coordinates.
                axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=1))
            axis.set_title(f"class {ds.class_names[int(label)]}", fontsize=9)
            axis.axis("off")
    return _save_figure(figure, path, dpi=80)


def save_dense_example(
    path: str | Path,
    seed: int = 5,
    scenes: int = 2,
    methods: tuple[str, ...] = DENSE_EXAMPLE_METHODS,
    cache_dir: str | None = None,
) -> Path:
    """Test scenes with 2-3 copies, one row per scene and method: the image with its true ink
    outlined, the dense model's per-pixel classes, then the method's map of a ``region`` target per
    copy (that copy's true mask, the image's class) over the image, the target's mask outlined.
    The model directory comes from ``cache_dir`` (default: the config's ``runtime.cache_dir``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from camserve.config import CamserveConfig
    from camserve.default_model import DENSE_CLASS_NAMES, dense_model_dir, load_dense_model
    from camserve.default_model.net import BACKGROUND, normalize
    from camserve.explainer import Explainer
    from camserve.methods.target_kinds import Target

    ds = make_localisation_dataset(scenes, seed=seed, instances=(2, 3), split="test")
    config = CamserveConfig.load()
    explainer = Explainer(dense_model_dir(cache_dir or config.runtime.cache_dir), config=config)
    inputs = normalize(ds.images)
    with torch.no_grad():
        classes = load_dense_model()(inputs).argmax(1)
    copies = max(len(b) for b in ds.boxes)
    rows = scenes * len(methods)
    figure, axes = plt.subplots(rows, 2 + copies, figsize=(1.9 * (2 + copies), 2.0 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(10))[:, :3]
    for i in range(scenes):
        label, masks = int(ds.labels[i]), ds.instance_masks(i)
        targets = [[Target("region", class_id=label, mask=m.numpy()) for m in masks]]
        maps = explainer.explain(inputs[i : i + 1], methods=list(methods), targets=targets).maps
        picture = ds.images[i].permute(1, 2, 0).numpy()
        for j, method in enumerate(methods):
            row = axes[i * len(methods) + j]
            row[0].imshow(picture)
            row[0].contour(ds.masks[i].numpy(), levels=[0.5], colors="white", linewidths=0.6)
            row[0].set_title(f"class {label}, {len(masks)} copies", fontsize=8)
            background = (classes[i] == BACKGROUND).numpy()[..., None]
            row[1].imshow(np.where(background, 0.0, colours[classes[i].clamp(max=9).numpy()]))
            found = sorted({DENSE_CLASS_NAMES[c] for c in classes[i].unique().tolist() if c != BACKGROUND})
            row[1].set_title(f"predicted: {', '.join(found) or 'none'}", fontsize=8)
            for k in range(len(masks)):
                row[2 + k].imshow(picture)
                row[2 + k].imshow(maps[method][0, k], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
                row[2 + k].contour(masks[k].numpy(), levels=[0.5], colors="white", linewidths=0.8)
                row[2 + k].set_title(f"{method}, region: copy {k + 1}", fontsize=8)
            for axis in row:
                axis.axis("off")
    return _save_figure(figure, path, dpi=64)


class DigitBoxHead(nn.Module):
    """A dense detection head on the trained dense digits model, for the docs' example: every cell
    of a ``cell`` x ``cell`` grid is an anchor whose class scores are the segmentation logits'
    mean over the cell (background left out) and whose box is a fixed ``box`` x ``box`` square
    centred on the cell — raw, pre-NMS outputs, as a RetinaNet/FCOS-style head gives them."""

    def __init__(self, segmenter: nn.Module, cell: int = 4, box: int = 24) -> None:
        super().__init__()
        self.segmenter, self.cell, self.box = segmenter, cell, box

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.segmenter(images)[:, :BACKGROUND]  # [N,10,H,W]
        cells = F.avg_pool2d(logits, self.cell)  # [N,10,h,w]
        n, _, h, w = cells.shape
        cy = (torch.arange(h, dtype=images.dtype) + 0.5) * self.cell
        cx = (torch.arange(w, dtype=images.dtype) + 0.5) * self.cell
        centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), dim=-1).reshape(-1, 2)  # (x, y)
        half = self.box / 2
        boxes = torch.cat([centres - half, centres + half], dim=1).clamp(0, images.shape[-1])
        return {"scores": cells.flatten(2).transpose(1, 2), "boxes": boxes.expand(n, -1, -1)}


class DigitEmbedding(nn.Module):
    """The trained digits classifier without its last layer: the pooled features [N,64] as an
    embedding (as a ResNet with ``fc = Identity``)."""

    def __init__(self, classifier: DigitCamNet) -> None:
        super().__init__()
        self.features, self.pool = classifier.features, classifier.pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images)).flatten(1)


KindPanel = tuple[str, str, torch.Tensor, tuple[float, ...] | None]  # kind, title, map [H,W], box drawn


def kinds_example_maps(
    seed: int = 7, method: str = KINDS_EXAMPLE_METHOD, cache_dir: str | None = None
) -> tuple[torch.Tensor, list[KindPanel]]:
    """The input image [3,H,W] and one panel per output kind and target, on the repo's trained
    digits models (maps of ``method``): a classifier's logit / probability / sigmoid of the true class; the
    dense model's ``region`` (one copy's box) and ``predicted_region``; a detection head's ``box``
    target (one copy's true box); an embedding's ``cosine_image`` similarity to a single-digit
    image of the same class and of another class. Models are exported into a temporary folder
    (the classifier and dense model: the cache, as ``camserve explain`` does)."""
    import tempfile

    from camserve.config import CamserveConfig
    from camserve.default_model import (
        CLASS_NAMES,
        DENSE_CLASS_NAMES,
        default_model_dir,
        dense_model_dir,
        load_default_model,
        load_dense_model,
    )
    from camserve.default_model.net import INPUT_SIZE, MEAN, STD, TARGET_LAYER, normalize
    from camserve.explainer import Explainer
    from camserve.export import export_model
    from camserve.methods.target_kinds import Target

    config = CamserveConfig.load()
    cache = cache_dir or config.runtime.cache_dir
    scene = make_localisation_dataset(1, seed=seed, instances=(2, 2), split="test")
    label = int(scene.labels[0])
    singles = make_localisation_dataset(64, seed=seed + 1, instances=(1, 1), split="test")
    same = int((singles.labels == label).nonzero()[0, 0])
    other = int((singles.labels != label).nonzero()[0, 0])
    images = normalize(torch.cat([scene.images[:1], singles.images[[same, other]]]))
    x0, y0, x1, y1 = (float(v) for v in scene.boxes[0][0].tolist())
    box = (x0, y0, x1, y1)
    panels: list[KindPanel] = []

    def explain(model_dir: Path | str, targets: list[Target | int]) -> torch.Tensor:
        explainer = Explainer(model_dir, config=config)
        result = explainer.explain(images, methods=[method], targets=[targets])
        return torch.from_numpy(result.maps[method][0])

    maps = explain(default_model_dir(cache), [Target(k, label) for k in ("logit", "probability", "sigmoid")])
    for t, kind in enumerate(("logit", "probability", "sigmoid")):
        panels.append(("classification", f"{kind} of {CLASS_NAMES[label]}", maps[t], None))
    maps = explain(
        dense_model_dir(cache), [Target("region", label, box=box), Target("predicted_region", label)]
    )
    panels.append(("dense", f"region (box) of {DENSE_CLASS_NAMES[label]}", maps[0], box))
    panels.append(("dense", f"predicted_region of {DENSE_CLASS_NAMES[label]}", maps[1], None))
    with tempfile.TemporaryDirectory() as tmp:
        detector = export_model(
            DigitBoxHead(load_dense_model()),
            f"segmenter.{TARGET_LAYER}",
            INPUT_SIZE,
            Path(tmp) / "det",
            name="digits-boxes",
            architecture="docs:DigitBoxHead",
            class_names=list(CLASS_NAMES),
            output="scores",
            output_kind="detection",
            boxes_output="boxes",
            mean=list(MEAN),
            std=list(STD),
            graphs=("explain",),
        )
        maps = explain(detector.path, [Target("box", label, box=box)])
        panels.append(("detection", f"box of {CLASS_NAMES[label]}", maps[0], box))
        embedding = export_model(
            DigitEmbedding(load_default_model()),
            TARGET_LAYER,
            INPUT_SIZE,
            Path(tmp) / "emb",
            name="digits-embedding",
            architecture="docs:DigitEmbedding",
            output_kind="embedding",
            class_names=[str(d) for d in range(64)],
            mean=list(MEAN),
            std=list(STD),
            graphs=("explain",),
        )
        maps = explain(embedding.path, [Target("cosine_image", image=1), Target("cosine_image", image=2)])
    same_name, other_name = CLASS_NAMES[int(singles.labels[same])], CLASS_NAMES[int(singles.labels[other])]
    panels.append(("embedding", f"cosine_image to a {same_name}", maps[0], None))
    panels.append(("embedding", f"cosine_image to a {other_name}", maps[1], None))

    return scene.images[0], panels


def save_kinds_example(
    path: str | Path, seed: int = 7, method: str = KINDS_EXAMPLE_METHOD, cache_dir: str | None = None
) -> Path:
    """:func:`kinds_example_maps` drawn (:func:`draw_kinds_example`)."""
    image, panels = kinds_example_maps(seed, method, cache_dir)
    return draw_kinds_example(path, image, panels, method)


def draw_kinds_example(path: str | Path, image: torch.Tensor, panels: list[KindPanel], method: str) -> Path:
    """The input, then each panel's map over it (boxes outlined), in one row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    picture = image.permute(1, 2, 0).numpy()
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(1.9 * (len(panels) + 1), 2.3))
    axes[0].imshow(picture)
    axes[0].set_title(f"input ({method})", fontsize=8)
    for axis, (kind, title, cam, drawn) in zip(axes[1:], panels, strict=True):
        axis.imshow(picture)
        axis.imshow(cam.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        if drawn is not None:
            x0, y0, x1, y1 = drawn
            axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1))
        axis.set_title(f"{kind}\n{title}", fontsize=8)
    for axis in axes:
        axis.axis("off")
    return _save_figure(figure, path, dpi=64)


def _save_figure(figure: Any, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dense", action="store_true", help="the dense model's segmentation and region maps")
    parser.add_argument("--kinds", action="store_true", help="one example per output kind and its targets")
    args = parser.parse_args(argv)
    if args.kinds:
        save_kinds_example(args.out)
    elif args.dense:
        save_dense_example(args.out)
    else:
        save_example_grid(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
