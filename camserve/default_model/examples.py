"""A picture of the digits localisation task: ``python -m camserve.default_model.examples OUT.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

from camserve.default_model.data import make_localisation_dataset


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    save_example_grid(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
