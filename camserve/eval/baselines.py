"""Baseline maps that every evaluation table reports next to the real methods.

A method is only worth its numbers if it beats maps that know nothing about the model:

random          uniform noise drawn at the feature resolution (the target layer's h x w) and upsampled
                like a CAM (bilinear, then min-max normalised), so it has the same smoothness as a real
                map and the comparison is about *where* the map is high, not how blocky it is.
centre_gaussian exp(-d^2 / (2 sigma^2)) around the image centre with sigma = 0.25 x the short side:
                the "objects are usually in the middle" prior (Judd et al., "Learning to predict where
                humans look", ICCV 2009, used as a baseline by the saliency literature).
"""

from __future__ import annotations

import torch

from camserve.errors import InvalidArgumentError
from camserve.kernels.reference import upsample_normalize

BASELINE_NAMES = ("random", "centre_gaussian")


def random_maps(
    n: int,
    size: tuple[int, int],
    feature_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """N random maps [N,H,W] in [0, 1]: uniform noise at ``feature_size`` (default: ``size``, i.e.
    pixel noise), bilinearly upsampled to ``size`` and min-max normalised."""
    if n < 0:
        raise InvalidArgumentError("n", f"must be non-negative, got {n}")
    h, w = _check_size("size", size)
    fh, fw = _check_size("feature_size", feature_size) if feature_size is not None else (h, w)
    noise = torch.rand(n, 1, fh, fw, generator=generator)
    return upsample_normalize(noise, (h, w)).squeeze(1).to(device)


def centre_gaussian_maps(
    n: int, size: tuple[int, int], sigma_fraction: float = 0.25, device: torch.device | str | None = None
) -> torch.Tensor:
    """N copies [N,H,W] of a Gaussian centred on the image, sigma = ``sigma_fraction`` x min(H, W) pixels,
    peak 1 at the centre (pixel centres at index + 0.5)."""
    h, w = _check_size("size", size)
    if not sigma_fraction > 0:
        raise InvalidArgumentError("sigma_fraction", f"must be positive, got {sigma_fraction}")
    sigma = sigma_fraction * min(h, w)
    y = torch.arange(h, dtype=torch.float32) + 0.5 - h / 2
    x = torch.arange(w, dtype=torch.float32) + 0.5 - w / 2
    d2 = y.reshape(-1, 1) ** 2 + x.reshape(1, -1) ** 2
    g = torch.exp(-d2 / (2 * sigma * sigma))
    g = g / g.max()
    return g.expand(n, h, w).contiguous().to(device)


def baseline_maps(
    name: str,
    n: int,
    size: tuple[int, int],
    feature_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The baseline called ``name`` (one of BASELINE_NAMES)."""
    if name == "random":
        return random_maps(n, size, feature_size, generator=generator)
    if name == "centre_gaussian":
        return centre_gaussian_maps(n, size)
    raise InvalidArgumentError("baseline", f"unknown baseline {name!r}; known: {', '.join(BASELINE_NAMES)}")


def _check_size(name: str, size: tuple[int, int] | None) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, f"expected (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise InvalidArgumentError(name, f"must be positive, got {size!r}")
    return h, w
