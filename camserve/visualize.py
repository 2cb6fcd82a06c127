"""Pictures of an ExplainResult: one overlay per image, method and target, and a grid of images x
methods like the comparison tables of CAM papers; and the service's overlay PNGs.

One renderer, :func:`blend_heatmap`, draws every overlay (CLI figures, grids, reports and the
service's ``overlay_png``): image_weight x the (de-normalised) input + (1 - image_weight) x the map
in a colour map (``OverlayStyle``; default "jet" at weight 0.5, the convention of the Grad-CAM
papers and pytorch-grad-cam's ``show_cam_on_image``); the map is resized (bilinear) to the image;
normalised maps are drawn on a fixed [0, 1] scale, raw maps on their own range. Guided
backpropagation's colour evidence is drawn as pytorch-grad-cam's ``deprocess_image`` does
(:func:`deprocess_image`) instead of a heatmap.
Files are written atomically (temporary file + rename). Matplotlib's object API is used (no pyplot
state), so this is safe to call from threads.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from camserve.config import OverlayStyle
from camserve.errors import InvalidArgumentError
from camserve.result import ExplainResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DEFAULT_STYLE = OverlayStyle()


def method_slug(method: str) -> str:
    """A file-name-safe form of a method name: "gradcam++" -> "gradcampp"."""
    return re.sub(r"[^A-Za-z0-9_-]", "", method.replace("+", "p"))


def image_labels(count: int, names: Sequence[str] | None) -> list[str]:
    """File-name stems for ``count`` images: ``names`` made safe and unique, or 000, 001, ..."""
    if names is None:
        return [f"{i:03d}" for i in range(count)]
    if len(names) != count:
        raise InvalidArgumentError("names", f"{len(names)} names for {count} images")
    safe = [re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem) or f"{i:03d}" for i, name in enumerate(names)]
    if len(set(safe)) != len(safe):
        safe = [f"{i:03d}_{stem}" for i, stem in enumerate(safe)]
    return safe


def target_title(result: ExplainResult, image: int, target: int) -> str:
    """ "class 'cat' (id 3), p = 0.91": the class a map explains and its predicted probability."""
    class_id = int(result.target_ids[image, target])
    probability = float(result.probabilities[image, class_id])
    return f"class {result.class_name(class_id)!r} (id {class_id}), p = {probability:.2f}"


def heatmap_scale(heatmap: np.ndarray, normalised: bool) -> Normalize:
    """The colour scale of a map: [0, 1] for normalised maps, the map's own range for raw ones."""
    if normalised:
        return Normalize(0.0, 1.0)
    low, high = float(np.min(heatmap)), float(np.max(heatmap))
    return Normalize(low, high if high > low else low + 1.0)


def blend_heatmap(
    pixels: np.ndarray, heatmap: np.ndarray, normalised: bool = True, style: OverlayStyle = DEFAULT_STYLE
) -> np.ndarray:
    """RGB [H,W,3] in [0, 1]: ``heatmap`` [h,w] (any size; resized bilinearly to H x W) in
    ``style.colormap``, blended with ``pixels`` [H,W,3] in [0, 1] at ``style.image_weight``. The one
    overlay renderer."""
    height, width = pixels.shape[:2]
    heat = np.asarray(heatmap, np.float32)
    scaled = np.clip(heatmap_scale(heat, normalised)(heat), 0.0, 1.0).astype(np.float32)
    if scaled.shape != (height, width):
        resized = Image.fromarray(scaled, mode="F").resize((width, height), Image.Resampling.BILINEAR)
        scaled = np.asarray(resized, np.float32)
    colored = colormaps[style.colormap](np.clip(scaled, 0.0, 1.0))[..., :3]
    weight = style.image_weight
    return weight * np.clip(pixels, 0.0, 1.0) + (1.0 - weight) * colored


def deprocess_image(rgb: np.ndarray) -> np.ndarray:
    """Signed colour evidence [3,H,W] (guided backpropagation) as uint8 RGB [H,W,3], as
    pytorch-grad-cam's ``deprocess_image`` draws it: standardised over all values, scaled to a
    standard deviation of 0.1 around mid-grey, clipped to [0, 1], times 255 truncated."""
    img = np.asarray(rgb, np.float32).transpose(1, 2, 0)
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = np.clip(img * 0.1 + 0.5, 0, 1)
    return (img * 255).astype(np.uint8)  # truncated, as np.uint8(img * 255)


def overlay_png(
    pixels: np.ndarray, heatmap: np.ndarray, normalised: bool = True, style: OverlayStyle = DEFAULT_STYLE
) -> bytes:
    """:func:`blend_heatmap` as PNG bytes (the service's ``overlay_png``)."""
    blended = np.rint(blend_heatmap(pixels, heatmap, normalised, style) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _draw(
    axes: Axes,
    result: ExplainResult,
    pixels: np.ndarray,
    index: tuple[str, int, int],
    normalised: bool,
    style: OverlayStyle,
) -> ScalarMappable | None:
    """Method ``index[0]``'s picture of image ``index[1]``, target ``index[2]``: colour evidence
    deprocessed, any other map blended over the image; returns the map's colour scale (opaque) for
    a colour bar, None for colour evidence (it has no scale)."""
    method, image, target = index
    axes.set_xticks([])
    axes.set_yticks([])
    if method in result.rgb:
        axes.imshow(deprocess_image(result.rgb[method][image, target]), interpolation="nearest")
        return None
    heatmap = result.maps[method][image, target]
    axes.imshow(blend_heatmap(pixels[image], heatmap, normalised, style), interpolation="nearest")
    return ScalarMappable(norm=heatmap_scale(np.asarray(heatmap), normalised), cmap=style.colormap)


def overlay_figure(
    result: ExplainResult,
    image: int,
    method: str,
    target: int,
    normalised: bool = True,
    pixels: np.ndarray | None = None,
    style: OverlayStyle = DEFAULT_STYLE,
) -> Figure:
    """One image with one method's map for one target, a colour bar, and the class and probability
    in the title. ``pixels``: ``result.pixels()`` if the caller already has it."""
    pixels = result.pixels() if pixels is None else pixels
    figure = Figure(figsize=(4.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = _draw(axes, result, pixels, (method, image, target), normalised, style)
    if shown is not None:
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_title(f"{method}: {target_title(result, image, target)}", fontsize=9)
    return figure


def save_overlays(
    result: ExplainResult,
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    normalised: bool = True,
    style: OverlayStyle = DEFAULT_STYLE,
) -> list[Path]:
    """One PNG per image, method and target in ``out_dir`` (created if missing), named
    ``<image>_<method>_t<target>.png``; returns the paths written."""
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise InvalidArgumentError("overlay", f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    labels = image_labels(result.images.shape[0], names)
    pixels = result.pixels()
    written = []
    for image, label in enumerate(labels):
        for method in result.methods:
            for target in range(result.target_ids.shape[1]):
                figure = overlay_figure(result, image, method, target, normalised, pixels, style)
                path = directory / f"{label}_{method_slug(method)}_t{target}.png"
                written.append(save_figure(figure, path))
    return written


def grid_figure(
    result: ExplainResult,
    target: int = 0,
    names: Sequence[str] | None = None,
    normalised: bool = True,
    style: OverlayStyle = DEFAULT_STYLE,
) -> Figure:
    """Rows: images; columns: the input, then one column per method (target ``target`` of each
    image); one shared colour bar."""
    num_targets = result.target_ids.shape[1]
    if not 0 <= target < num_targets:
        raise InvalidArgumentError(
            "target", f"the result has {num_targets} targets per image, got index {target}"
        )
    methods = result.methods
    rows, columns = result.images.shape[0], len(methods) + 1
    figure = Figure(figsize=(1.9 * columns + 0.6, 1.9 * rows + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    pixels = result.pixels()
    labels = names if names is not None else [f"image {i}" for i in range(rows)]
    shown = None
    for row in range(rows):
        grid[row, 0].imshow(pixels[row], interpolation="nearest")
        grid[row, 0].set_xticks([])
        grid[row, 0].set_yticks([])
        class_id = int(result.target_ids[row, target])
        grid[row, 0].set_ylabel(
            f"{Path(labels[row]).name}\n{result.class_name(class_id)} "
            f"p={float(result.probabilities[row, class_id]):.2f}",
            fontsize=8,
        )
        for column, method in enumerate(methods, start=1):
            drawn = _draw(grid[row, column], result, pixels, (method, row, target), normalised, style)
            shown = drawn if drawn is not None else shown
    grid[0, 0].set_title("input", fontsize=9)
    for column, method in enumerate(methods, start=1):
        grid[0, column].set_title(method, fontsize=9)
    if shown is not None:
        figure.colorbar(shown, ax=grid, fraction=0.02, pad=0.01)
    return figure


def save_grid(
    result: ExplainResult,
    path: str | os.PathLike[str],
    target: int = 0,
    names: Sequence[str] | None = None,
    normalised: bool = True,
    style: OverlayStyle = DEFAULT_STYLE,
) -> Path:
    """:func:`grid_figure` written as a PNG to ``path``."""
    return save_figure(grid_figure(result, target, names, normalised, style), Path(path))


def save_figure(figure: Figure, path: Path) -> Path:
    """PNG of ``figure`` at ``path`` via a temporary file in the same directory and a rename."""
    if not path.parent.is_dir():
        raise InvalidArgumentError("grid", f"directory {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            figure.savefig(fh, format="png")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
