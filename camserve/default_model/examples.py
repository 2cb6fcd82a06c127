"""Pictures of the digits task: ``python -m camserve.default_model.examples OUT.png`` (the scenes
and their boxes), ``... --dense OUT.png`` (the dense model's segmentation and region-target maps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from camserve.default_model.data import make_localisation_dataset
from camserve.defaults import DENSE_EXAMPLE_METHODS


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
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


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
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=64)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dense", action="store_true", help="the dense model's segmentation and region maps")
    args = parser.parse_args(argv)
    if args.dense:
        save_dense_example(args.out)
    else:
        save_example_grid(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
