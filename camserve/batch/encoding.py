"""How a batch job stores maps: the size it computes each method at, the dtype of the stored bytes,
and the one rule that turns stored maps back into ``Explainer`` maps.

Default: maps are stored at the target layer's resolution (``--map-size feature``), min-max
normalised, as float16 bytes [T,h,w] per image and method. Because ``Explainer`` produces any output
size by bilinear resizing of the feature-resolution map followed by per-map min-max (which is
invariant to the affine min-max already applied), :func:`resize_stored` reproduces its maps at every
size. Guided methods have input-resolution evidence, so ``feature`` stores them at the input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from camserve.config import parse_output_size
from camserve.errors import InvalidArgumentError
from camserve.methods import method_class

MAP_DTYPES: dict[str, type[np.generic]] = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8}
# Largest difference from the Explainer's float32 maps after resize_stored, per stored dtype
# (half an ulp of 1.0 in float16 is 2**-11; min-max renormalisation at most doubles it).
TOLERANCE = {"float16": 2e-3, "float32": 1e-5, "uint8": 1.0 / 255 + 1e-3}
RESIZE_RULE = (
    "bilinear resize of each stored [h,w] map to the output size (half-pixel centres, "
    "align_corners=False; torch.nn.functional.interpolate), then per-map min-max "
    "(m - min) / (max - min), all zeros where max - min <= eps; uint8 maps are read as value / 255"
)


@dataclass(frozen=True)
class MapEncoding:
    """size: 'feature' (the target layer's h x w), 'input' or 'HxW'; dtype: a MAP_DTYPES key;
    png: also store a PNG of each map at the input size (uint8)."""

    size: str = "feature"
    dtype: str = "float16"
    png: bool = False

    def check(self, normalize: bool) -> None:
        parse_output_size(self.size, "--map-size")
        if self.dtype not in MAP_DTYPES:
            raise InvalidArgumentError("--map-dtype", f"{self.dtype!r} is not one of {', '.join(MAP_DTYPES)}")
        if self.dtype == "uint8" and not normalize:
            raise InvalidArgumentError("--map-dtype", "uint8 maps need normalised maps (drop --raw)")
        if self.png and not normalize:
            raise InvalidArgumentError("--png", "PNG maps need normalised maps (drop --raw)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def computed_size(method: str, encoding: MapEncoding) -> str:
    """The ``ExplainOptions.output_size`` the job computes ``method`` at (its stored size)."""
    if encoding.size == "feature" and method_class(method).resolution == "input":
        return "input"
    return encoding.size


def encode_maps(maps: np.ndarray, dtype: str) -> list[bytes]:
    """float32 maps [N,T,h,w] -> one little-endian C-order blob per image."""
    if dtype == "uint8":
        stored = quantize_uint8(maps)
    else:
        stored = maps.astype(np.dtype(MAP_DTYPES[dtype]).newbyteorder("<"))
    return [image.tobytes() for image in stored]


def quantize_uint8(maps: np.ndarray) -> np.ndarray:
    """Normalised maps [N,T,h,w] -> uint8 by the kernels' one rule (``kernels.quantize_uint8``)."""
    import torch

    from camserve import kernels

    return kernels.quantize_uint8(
        torch.from_numpy(np.ascontiguousarray(maps, np.float32)), backend="torch"
    ).numpy()


def decode_maps(blobs: list[bytes], dtype: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Blobs from :func:`encode_maps` -> float32 [N,T,h,w] (uint8 read as value / 255)."""
    stored_dtype = np.dtype(MAP_DTYPES[dtype]).newbyteorder("<")
    if not blobs:
        return np.zeros((0, *shape), dtype=np.float32)
    flat = np.frombuffer(b"".join(blobs), dtype=stored_dtype).reshape(len(blobs), *shape)
    maps = flat.astype(np.float32)
    return maps / 255.0 if dtype == "uint8" else maps


def resize_stored(maps: np.ndarray, size: tuple[int, int] | None, normalize: bool, eps: float) -> np.ndarray:
    """Stored maps [N,T,h,w] -> [N,T,H,W] by :data:`RESIZE_RULE`, with the kernels' own code."""
    import torch

    from camserve import kernels

    out = kernels.upsample_normalize(torch.from_numpy(maps), size, normalize, eps, backend="torch")
    return out.numpy()


def png_maps(maps: np.ndarray) -> list[list[bytes]]:
    """Normalised maps [N,T,H,W] in [0, 1] -> PNG bytes (8-bit grayscale, round(255 m)) per target."""
    import io

    from PIL import Image

    out = []
    for image in quantize_uint8(maps):
        encoded = []
        for target_map in image:
            buffer = io.BytesIO()
            Image.fromarray(target_map, mode="L").save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        out.append(encoded)
    return out
