"""A map blended over the image it explains, as PNG bytes (OutputOptions.overlay_png)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

ALPHA = 0.5  # weight of the heat map in the blend
COLORMAP = "jet"


def overlay_png(image: np.ndarray, heatmap: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> bytes:
    """``image`` float32 [3,H,W] preprocessed with ``mean``/``std``; ``heatmap`` [h,w] of any size (it is
    resized to H x W and min-max scaled for display)."""
    from matplotlib import colormaps  # imported on first use: most requests ask for no overlay

    rgb = image * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    rgb = np.clip(rgb.transpose(1, 2, 0), 0.0, 1.0)
    height, width = rgb.shape[:2]
    heat = np.asarray(heatmap, np.float32)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    if heat.shape != (height, width):
        resized = Image.fromarray(heat, mode="F").resize((width, height), Image.Resampling.BILINEAR)
        heat = np.asarray(resized, np.float32)
    colored = colormaps[COLORMAP](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - ALPHA) * rgb + ALPHA * colored
    buffer = io.BytesIO()
    Image.fromarray(np.rint(blended * 255.0).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
