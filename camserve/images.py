"""Turning what users pass as images into the model's input: a float32 tensor [N,C,H,W], where
C x H x W is the manifest's ``input_size`` (any C; H and W need not be equal).

Accepted, alone or in a list (mixed freely; results are concatenated in order):

* a file path (str or os.PathLike): an image file (anything Pillow reads) -> resized, normalised;
  a ``.npy`` file -> a float32 array [N,C,H,W] or [C,H,W], already preprocessed, used as it is;
* a PIL image (any mode; converted to the model's mode: "L" for C = 1, "RGB" for C = 3, "RGBA"
  for C = 4; other C take no encoded images) -> resized, normalised;
* a uint8 array or tensor, [H,W,C] or [N,H,W,C] (channels last, as PIL and numpy have them; [H,W]
  too when C = 1) -> resized, normalised;
* a float32 array or tensor, [C,H,W] or [N,C,H,W] (channels first) -> already preprocessed: used as
  it is, so H x W must be the model's input size.

The dtype decides which: uint8 is pixels, float32 is a preprocessed tensor; anything else is
refused. Preprocessing follows the manifest: bilinear resize to the input size (antialiased, plain
stretch, no crop), /255, then (x - mean) / std per channel.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError, NotFoundError

ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor

#: The Pillow mode an image file or PIL image is converted to, per model input channel count.
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_mode(channels: int, field: str) -> str:
    """The Pillow mode images are decoded to for a model of ``channels`` input channels;
    InvalidArgumentError naming ``field`` when images (PNG, JPEG, ...) cannot give that many."""
    mode = IMAGE_MODES.get(int(channels))
    if mode is None:
        raise InvalidArgumentError(
            field,
            f"the model takes {channels} input channels and an encoded image gives 1 (greyscale), "
            "3 (RGB) or 4 (RGBA): send uint8 pixels [N,H,W,C] or a preprocessed float32 tensor",
        )
    return mode


def display_rgb(unit: torch.Tensor) -> torch.Tensor:
    """Images [N,C,H,W] in [0, 1] -> displayable RGB [N,H,W,3] for overlays: C = 3 as it is; any
    other C as grey, the mean over the channels (the one channel for C = 1)."""
    if unit.shape[1] != 3:
        unit = unit.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return unit.permute(0, 2, 3, 1)


def preprocess(
    images: ImageLike | Sequence[ImageLike],
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Images in any accepted form -> float32 [N,C,H,W], normalised as the model expects: on the GPU
    when any item is a CUDA tensor (CUDA tensors are preprocessed where they are, never copied to
    the host and back; other items join them there), else on the CPU.

    input_size is the manifest's [C, H, W]. Raises InvalidArgumentError("images[i]", ...) naming
    the offending item (NotFoundError for a missing file); never returns an empty batch.
    """
    channels, height, width = (int(v) for v in input_size)
    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        raise InvalidArgumentError("images", "no images given")
    single = len(items) == 1 and not isinstance(images, list | tuple)
    batches = []
    floats_given = False  # pixels normalise to finite values; only float inputs need the check
    for index, item in enumerate(items):
        name = "images" if single else f"images[{index}]"
        batch, from_floats = _one_item(item, name, (channels, height, width), mean, std)
        floats_given = floats_given or from_floats
        if batch.shape[1:] != (channels, height, width):
            raise InvalidArgumentError(
                name,
                f"preprocessed input must be [N,{channels},{height},{width}] (the model's input size), "
                f"got {list(batch.shape)}",
            )
        batches.append(batch)
    device = next((b.device for b in batches if b.device.type != "cpu"), torch.device("cpu"))
    batch = batches[0].to(device) if len(batches) == 1 else torch.cat([b.to(device) for b in batches])
    if batch.shape[0] == 0:
        raise InvalidArgumentError("images", "no images given (empty batch)")
    if floats_given:
        finite = torch.isfinite(batch).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0])
            raise InvalidArgumentError("images", f"image {bad} has NaN or infinite values")
    return batch


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, for images [N,C,H,W] with values in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).reshape(1, -1, 1, 1)
    return (pixels - mean_t) / std_t


def normalize_pixels(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [N,H,W,C] -> normalised float32 [N,C,H,W] on the CPU, by table lookup: the table holds
    the float32 ``(v / 255 - mean) / std`` of :func:`normalize` for each of the 256 values, so the numbers
    are the same, without torch's cost per call (a server preprocesses one small image at a time)."""
    table = _normalize_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return np.stack([table[c][pixels[..., c]] for c in range(table.shape[0])], axis=1)


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    values = torch.arange(256, dtype=torch.float32).div_(255.0).reshape(1, 1, -1, 1)
    return normalize(values.expand(1, len(mean), 256, 1), mean, std)[0, :, :, 0].numpy()


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of :func:`normalize`, clamped to [0, 1]: preprocessed input back to pixels."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).reshape(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def _one_item(
    item: ImageLike, name: str, shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, bool]:
    """One item as float32 [N,C,H,W], and whether it was given as floats (not pixels)."""
    from PIL import Image

    channels, size = shape[0], (shape[1], shape[2])
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        if not path.is_file():
            raise NotFoundError(f"{name}: no such file: {path}")
        if path.suffix.lower() == ".npy":
            return _preprocessed(torch.from_numpy(_load_npy(path, name)), name), True
        return _pixels(_read_image(path, name, channels), name, channels, size, mean, std), False
    if isinstance(item, Image.Image):
        mode = image_mode(channels, name)
        converted = item if item.mode == mode else item.convert(mode)
        array = torch.from_numpy(np.array(converted))  # one writable copy; "L" gives [H,W]
        return _pixels(array, name, channels, size, mean, std), False
    if isinstance(item, np.ndarray):
        contiguous = np.ascontiguousarray(item)
        # torch wants writable memory (e.g. np.asarray(PIL image) is read-only)
        item = torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())
    if isinstance(item, torch.Tensor):
        tensor = item.detach()
        if tensor.dtype == torch.uint8:
            return _pixels(tensor, name, channels, size, mean, std), False
        if tensor.dtype == torch.float32:
            return _preprocessed(tensor, name), True
        raise InvalidArgumentError(
            name,
            f"dtype {str(tensor.dtype).removeprefix('torch.')} is not accepted: pass uint8 pixels "
            f"[H,W,{channels}] or a float32 preprocessed tensor [N,{channels},H,W]",
        )
    raise InvalidArgumentError(
        name, f"expected a file path, PIL image, numpy array or torch tensor, got {type(item).__name__}"
    )


def _preprocessed(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.dtype != torch.float32:
        raise InvalidArgumentError(name, f"a preprocessed tensor must be float32, got {tensor.dtype}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InvalidArgumentError(
            name, f"a preprocessed tensor must be [N,C,H,W] or [C,H,W], got shape {list(tensor.shape)}"
        )
    return tensor


def _pixels(
    pixels: torch.Tensor,
    name: str,
    channels: int,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 [H,W,C] or [N,H,W,C] ([H,W] when C = 1) -> resized, normalised float32 [N,C,H,W]."""
    if pixels.ndim == 2 and channels == 1:
        pixels = pixels.unsqueeze(-1)
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.ndim != 4 or pixels.shape[-1] != channels:
        hint = (
            " (a channels-first uint8 tensor needs .permute(1, 2, 0))"
            if pixels.shape[-3:-2] == (channels,)
            else ""
        )
        raise InvalidArgumentError(
            name,
            f"uint8 pixels must be [H,W,{channels}] or [N,H,W,{channels}] (the model's {channels} "
            f"input channels), got shape {list(pixels.shape)}{hint}",
        )
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise InvalidArgumentError(name, f"the image is empty (shape {list(pixels.shape)})")
    if pixels.device.type == "cpu" and tuple(pixels.shape[1:3]) == size:
        return torch.from_numpy(normalize_pixels(pixels.numpy(), mean, std))
    unit = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # in place: big images stay ~half
    if tuple(unit.shape[-2:]) != size:
        unit = F.interpolate(unit, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(
            0, 1
        )
    return normalize(unit, mean, std)


def _read_image(path: Path, name: str, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    mode = image_mode(channels, name)
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidArgumentError(name, f"{path} is not a readable image ({exc})") from None
    return torch.from_numpy(np.asarray(converted).copy())


def _load_npy(path: Path, name: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidArgumentError(name, f"{path} is not a readable .npy array ({exc})") from None
    if array.dtype != np.float32:
        raise InvalidArgumentError(name, f"{path}: a preprocessed .npy must be float32, got {array.dtype}")
    return np.ascontiguousarray(array)
