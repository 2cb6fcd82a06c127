"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022).

Deletion-style metrics fill removed pixels with a constant, and the model may react to the *shape* of
the hole (which leaks the map's ranking) rather than to the lost evidence. ROAD fills them by noisy
linear imputation instead: every removed pixel takes the weighted mean of its 8 neighbours (weight
1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones, as in the paper), solved jointly for
all removed pixels with the kept pixels as boundary values, plus Gaussian noise (sigma = 0.01 in the
input space by default) on the imputed pixels, so the hole carries no sharp edge.

For each fraction p (10 %, 20 %, ..., 90 % by default) the target's probability is measured after
removing the top p of pixels (MoRF, most relevant first: a fast drop is good, lower is better) and
after removing the bottom p (LeRF, least relevant first: the probability should stay, higher is
better). The summaries per map, as pytorch-grad-cam's ``metrics/road.py`` defines them:

    morf_mean, lerf_mean       the mean over the fractions of each curve
    morf_change, lerf_change   the same minus the unperturbed image's probability
                               (``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``)
    combined                   (lerf_mean - morf_mean) / 2 (``ROADCombined``; higher is better)

How many pixels a fraction p of P removes is pytorch-grad-cam's percentile threshold on a map without
ties: P - ceil((P - 1)(1 - p)) (:func:`road_count`). On tied values (the flat zero regions of ReLU'd
maps) pytorch-grad-cam removes every pixel at the threshold, up to the whole image; camserve removes
exactly that count, ties taken in row-major order.

The linear system (for every removed pixel i: sum_j w_ij (x_i - x_j) = 0) is symmetric positive
definite whenever some pixel is kept; it is solved matrix-free by conjugate gradients with a Jacobi
preconditioner, batched over images and channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError
from camserve.eval.faithfulness import (
    DEFAULT_BATCH_SIZE,
    Forward,
    _flatten_items,
    class_probabilities,
    pixel_ranks,
)

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# neighbour weights of the paper's imputer: 1/6 direct, 1/12 diagonal
_WEIGHTS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij x_j over each pixel's in-image neighbours, for x [B,C,H,W]."""
    c = x.shape[1]
    kernel = _WEIGHTS.to(x).reshape(1, 1, 3, 3).expand(c, 1, 3, 3).contiguous()
    return F.conv2d(x, kernel, padding=1, groups=c)


def linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, tolerance: float = 1e-5, max_iterations: int = 2000
) -> torch.Tensor:
    """``images`` [B,C,H,W] with the pixels where ``removed`` [B,H,W] is True replaced by the solution
    of sum_j w_ij (x_i - x_j) = 0 (each removed pixel the weighted mean of its neighbours). Kept
    pixels are unchanged. At least one pixel of every image must be kept."""
    if removed.shape != (images.shape[0], *images.shape[-2:]) or removed.dtype != torch.bool:
        raise InvalidArgumentError(
            "removed", f"expected a boolean mask [B,H,W] for images {tuple(images.shape)}"
        )
    if bool(removed.flatten(1).all(dim=1).any()):
        raise InvalidArgumentError("removed", "every image must keep at least one pixel")
    x = images.double()
    unknown = removed.unsqueeze(1).to(x).expand_as(x)
    known = 1.0 - unknown
    degree = _neighbour_sum(torch.ones_like(x))  # sum_j w_ij over in-image neighbours

    def apply(v: torch.Tensor) -> torch.Tensor:  # A v on the unknown pixels
        v = v * unknown
        return (degree * v - _neighbour_sum(v)) * unknown

    rhs = _neighbour_sum(x * known) * unknown
    solution = torch.zeros_like(x)
    residual = rhs.clone()
    inv_diag = unknown / degree
    z = residual * inv_diag
    direction = z.clone()
    rz = (residual * z).sum(dim=(-2, -1), keepdim=True)
    scale = rhs.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    for _ in range(max_iterations):
        if bool((residual.abs().amax(dim=(-2, -1), keepdim=True) <= tolerance * scale).all()):
            break
        ad = apply(direction)
        denom = (direction * ad).sum(dim=(-2, -1), keepdim=True)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-300), torch.zeros_like(rz))
        solution = solution + alpha * direction
        residual = residual - alpha * ad
        z = residual * inv_diag
        rz_next = (residual * z).sum(dim=(-2, -1), keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-300), torch.zeros_like(rz))
        direction = z + beta * direction
        rz = rz_next
    return torch.where(unknown.bool(), solution, x).to(images.dtype)


def road_count(fraction: float, num_pixels: int) -> int:
    """Pixels a fraction removes: P - ceil((P - 1)(1 - f)), the pixels at or above pytorch-grad-cam's
    threshold np.percentile(map, 100 (1 - f)) on a map of P distinct values (linear interpolation
    between the order statistics). The 1e-9 keeps an exact integer from rounding up."""
    return num_pixels - math.ceil((num_pixels - 1) * (1.0 - fraction) - 1e-9)


@dataclass
class RoadResult:
    """fractions [F]; morf / lerf [..., F]: the target's probability after removing that fraction of
    the most / least relevant pixels; original [...]: its probability on the unperturbed image
    (leading shape as the maps)."""

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor
    original: torch.Tensor

    @property
    def morf_mean(self) -> torch.Tensor:
        """Mean MoRF probability over the fractions (lower is better)."""
        return self.morf.mean(-1)

    @property
    def lerf_mean(self) -> torch.Tensor:
        """Mean LeRF probability over the fractions (higher is better)."""
        return self.lerf.mean(-1)

    @property
    def morf_change(self) -> torch.Tensor:
        """Mean MoRF probability minus the unperturbed one (pytorch-grad-cam's MoRF average)."""
        return self.morf_mean - self.original

    @property
    def lerf_change(self) -> torch.Tensor:
        """Mean LeRF probability minus the unperturbed one (pytorch-grad-cam's LeRF average)."""
        return self.lerf_mean - self.original

    @property
    def combined(self) -> torch.Tensor:
        """(LeRF - MoRF) / 2 of the means (pytorch-grad-cam's ROADCombined; higher is better)."""
        return (self.lerf_mean - self.morf_mean) / 2


def road(
    forward: Forward,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RoadResult:
    """ROAD MoRF and LeRF curves (see the module docstring). ``images`` are the model's (normalised)
    inputs; ``noise`` is the standard deviation of the Gaussian noise added to imputed pixels, in that
    space, drawn from a generator seeded with ``seed`` so results repeat."""
    if not fractions or not all(0.0 < f < 1.0 for f in fractions):
        raise InvalidArgumentError("fractions", f"need fractions in (0, 1), got {list(fractions)}")
    if noise < 0:
        raise InvalidArgumentError("noise", f"must be non-negative, got {noise}")
    items = _flatten_items(images, maps, targets)
    h, w = items.maps.shape[-2:]
    counts = torch.tensor([road_count(f, h * w) for f in fractions], device=items.maps.device)
    ranks = pixel_ranks(items.maps).reshape(-1, h, w)
    generator = torch.Generator().manual_seed(seed)
    idx, tg = items.image_index, items.targets
    per_item = 2 * len(fractions)  # MoRF fractions, then LeRF fractions

    def batch(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.arange(a, b, device=items.maps.device)
        item, rest = flat // per_item, flat % per_item
        lerf, step = rest >= len(fractions), rest % len(fractions)
        k = counts[step].reshape(-1, 1, 1)
        r = ranks[item]
        removed = torch.where(lerf.reshape(-1, 1, 1), r >= h * w - k, r < k)
        x = images[idx[item]]
        filled = linear_imputation(x, removed)
        if noise > 0:
            jitter = torch.randn(filled.shape, generator=generator).to(filled) * noise
            filled = filled + jitter * removed.unsqueeze(1)
        return filled, tg[item]

    probs = class_probabilities(forward, len(idx) * per_item, batch, batch_size=batch_size)
    curves = probs.reshape(*items.lead_shape, 2, len(fractions))
    original = class_probabilities(
        forward, len(idx), lambda a, b: (images[idx[a:b]], tg[a:b]), batch_size=batch_size
    ).reshape(items.lead_shape)
    return RoadResult(torch.tensor(list(fractions)), curves[..., 0, :], curves[..., 1, :], original)
