"""Region-target masks as every front door receives them: PNG bytes, raw bytes, COCO-style RLE or a
file (PNG / ``.npy``). One decoder per encoding, all giving float32 weights [h, w] in [0, 1] that
:func:`camserve.methods.target_kinds.build_table` then checks against the dense output's grid.

=========  ===================================================================================
PNG        greyscale (or any mode, converted to 8-bit greyscale "L"): weight = value / 255; a
           1-bit PNG gives 0 / 1. Checked by ``camserve.encoded_images`` (limits, PNG only)
           before anything is decoded.
raw        ``height x width`` bytes, row-major, uint8: weight = value / 255 (what a PNG holds,
           without the encoding)
RLE        COCO's uncompressed RLE (pycocotools ``{"size": [h, w], "counts": [...]}``): run
           lengths alternating 0s and 1s, starting with 0s, over the pixels in column-major
           (Fortran) order; ``sum(counts)`` must be ``h * w``
file       ``.png`` (as PNG) or ``.npy`` (a 2-D array of booleans or numbers, the weights as
           they are)
=========  ===================================================================================

Each decoder takes ``grid`` (the dense output's [h', w'] when known) and refuses another size
before decoding; errors are InvalidArgumentError naming the field (``images[0].target_specs[1].mask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camserve.defaults import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS
from camserve.encoded_images import check_image, decode_checked
from camserve.errors import InvalidArgumentError

MASK_SUFFIXES = (".png", ".npy")


def png_mask(data: bytes, field: str, grid: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> weights [h, w] (value / 255 of the image as 8-bit greyscale)."""
    header = check_image(data, field, formats=("PNG",))
    _check_size((header.height, header.width), grid, field)
    image = decode_checked(header, field, channels=1)
    return np.asarray(image, dtype=np.float32) / 255.0


def raw_mask(
    data: bytes, height: int, width: int, field: str, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """``height x width`` uint8 bytes, row-major -> weights value / 255."""
    _check_dims(height, width, field)
    _check_size((height, width), grid, field)
    if len(data) != height * width:
        raise InvalidArgumentError(
            f"{field}.data", f"holds {len(data)} bytes; a {height}x{width} uint8 mask needs {height * width}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width).astype(np.float32) / 255.0


def rle_mask(
    height: int, width: int, counts: Sequence[int], field: str, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """COCO uncompressed RLE (column-major runs, 0s first) -> a 0 / 1 mask [h, w]."""
    _check_dims(height, width, field)
    _check_size((height, width), grid, field)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise InvalidArgumentError(f"{field}.counts", "expected run lengths >= 0")
    total = int(runs.sum())
    if total != height * width:
        raise InvalidArgumentError(
            f"{field}.counts", f"the runs cover {total} pixels; a {height}x{width} mask has {height * width}"
        )
    values = (np.arange(len(runs)) % 2).astype(np.float32)  # 0s first, as pycocotools
    return np.repeat(values, runs).reshape(width, height).T.copy()


def file_mask(path: str | Path, field: str, grid: tuple[int, int] | None = None) -> np.ndarray:
    """A ``.png`` or ``.npy`` mask file -> weights [h, w] (PNG: value / 255; NPY: as stored)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise InvalidArgumentError(field, f"{path}: a mask file is {' or '.join(MASK_SUFFIXES)}")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise InvalidArgumentError(field, f"{path}: over {MAX_IMAGE_FILE_BYTES} bytes")
        if suffix == ".png":
            return png_mask(path.read_bytes(), field, grid)
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise InvalidArgumentError(field, f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidArgumentError(field, f"{path}: not a .npy array ({exc})") from None
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            field,
            f"{path}: expected a 2-D array of booleans or numbers, got {array.dtype} {list(array.shape)}",
        )
    _check_size((int(array.shape[0]), int(array.shape[1])), grid, field)
    return array.astype(np.float32)


def _check_dims(height: int, width: int, field: str) -> None:
    if not (height >= 1 and width >= 1 and height * width <= MAX_IMAGE_PIXELS):
        raise InvalidArgumentError(
            f"{field}.height", f"a mask is 1..{MAX_IMAGE_PIXELS} pixels; got {height}x{width}"
        )


def _check_size(size: tuple[int, int], grid: tuple[int, int] | None, field: str) -> None:
    if grid is not None and tuple(size) != tuple(grid):
        raise InvalidArgumentError(
            field,
            f"is {size[0]}x{size[1]}; the model's dense output is {grid[0]}x{grid[1]} "
            "(give the mask on the output's grid)",
        )
