"""Faithfulness metrics: does the model's confidence follow the map?

Every function here perturbs the images according to the maps and runs the perturbed images through
``forward`` (``GraphRunner.forward``: normalised images [B,3,H,W] -> logits [B,C]) in chunks of
``batch_size``, so that thousands of perturbed images run as a few large batches.

Shared arguments:

    images    [N,3,H,W] float  the model's inputs, already normalised ((x - mean) / std)
    maps      [N,H,W] or [N,T,H,W] float, at the images' resolution (T maps per image, e.g. T targets)
    targets   [N] or [N,T] int64: the class each map explains
    baseline  what a removed pixel becomes, in the same normalised space as ``images``: a float, or a
              tensor broadcastable to [N,3,H,W] ([3,1,1] colour, [N,3,H,W] per-image such as a blur)

Results have the maps' leading shape ([N] or [N,T]).

**How "the image multiplied by the map" is formed for normalised inputs.** The papers multiply the
*pixels* by the map, so a pixel where the map is 0 becomes black. With a normalised input x_n =
(x - mean) / std that is

    x~_n = ((m * x) - mean) / std = b + m * (x_n - b),   b = -mean / std (black, normalised)

i.e. a blend between the image and the ``baseline`` b. camserve's evaluation passes the black image
b = ``black_baseline(mean, std)`` by default, which reproduces the paper's operation exactly whatever
mean/std the model uses. Multiplying the normalised tensor itself (``baseline=0``, what several
libraries do) fades towards the dataset's mean colour instead, and the score then depends on the
normalisation constants; it is available by passing ``baseline=0.0`` (the functions' default, which
for un-normalised [0, 1] inputs is black).

Pixels are ranked by the map in descending order; ties keep row-major order (a stable sort), so every
result is deterministic. The k most salient pixels for a fraction f of P pixels are k = floor(f P + 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from camserve.chunking import run_in_chunks
from camserve.errors import InvalidArgumentError

Forward = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_BATCH_SIZE = 64


# ---------------------------------------------------------------------------------------------------
# Baselines for removed pixels
# ---------------------------------------------------------------------------------------------------


def black_baseline(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The black image (pixel value 0) in normalised space, [3,1,1]: -mean / std."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    if mean_t.shape != std_t.shape:
        raise InvalidArgumentError("std", f"has {std_t.numel()} values but mean has {mean_t.numel()}")
    if bool((std_t <= 0).any()):
        raise InvalidArgumentError("std", "every value must be positive")
    return -mean_t / std_t


def blurred_images(images: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-blurred copies of ``images`` [N,3,H,W]: the insertion baseline of RISE.

    Petsiuk et al. insert pixels into a blurred image (a 1-pixel Gaussian on 224-pixel images) so that the
    start of the insertion curve has the image's colours but not its shapes. On small images a 1-pixel
    blur leaves the shapes readable, so the default sigma is ``max(H, W) / 16`` pixels (4 px at 64 px).
    Borders are reflected.
    """
    _check_images(images)
    h, w = images.shape[-2:]
    if sigma is None:
        sigma = max(h, w) / 16.0
    if not sigma > 0:
        raise InvalidArgumentError("sigma", f"must be positive, got {sigma}")
    radius = max(1, min(int(math.ceil(3.0 * sigma)), min(h, w) - 1))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    out = F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    return out


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidArgumentError("images", f"expected a tensor [N,C,H,W], got {shape}")
    if not images.is_floating_point():
        raise InvalidArgumentError("images", f"expected floating point values, got {images.dtype}")


@dataclass
class _Items:
    """Maps flattened to M = N*T items, each with the index of its image and its target class."""

    maps: torch.Tensor  # [M,H,W]
    image_index: torch.Tensor  # [M]
    targets: torch.Tensor  # [M]
    lead_shape: tuple[int, ...]  # (N,) or (N,T)


def _flatten_items(images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | None) -> _Items:
    _check_images(images)
    n, _, h, w = images.shape
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
        raise InvalidArgumentError("maps", "expected a tensor [N,H,W] or [N,T,H,W]")
    if maps.shape[0] != n or tuple(maps.shape[-2:]) != (h, w):
        raise InvalidArgumentError(
            "maps", f"shape {tuple(maps.shape)} does not match images {tuple(images.shape)} (N and H,W)"
        )
    lead = tuple(maps.shape[:-2])
    t = lead[1] if len(lead) == 2 else 1
    image_index = torch.arange(n, device=maps.device).repeat_interleave(t)
    if targets is None:
        flat_targets = torch.zeros(n * t, dtype=torch.long, device=maps.device)
    else:
        targets = torch.as_tensor(targets, device=maps.device)
        if tuple(targets.shape) != lead:
            raise InvalidArgumentError(
                "targets", f"shape {tuple(targets.shape)} should be {lead} like the maps"
            )
        if targets.dtype not in (torch.int64, torch.int32):
            raise InvalidArgumentError("targets", f"expected integer classes, got {targets.dtype}")
        flat_targets = targets.reshape(-1).long()
    return _Items(maps.reshape(-1, h, w).float(), image_index, flat_targets, lead)


def _expand_baseline(baseline: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """The baseline as a [N,3,H,W] view (expanded, not copied)."""
    b = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        return torch.broadcast_to(b, images.shape)
    except RuntimeError:
        raise InvalidArgumentError(
            "baseline", f"shape {tuple(b.shape)} does not broadcast to the images {tuple(images.shape)}"
        ) from None


def _check_unit_range(maps: torch.Tensor, what: str) -> None:
    lo, hi = float(maps.min()), float(maps.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InvalidArgumentError(
            "maps", f"{what} needs maps in [0, 1] (min-max normalised); got values in [{lo:.4g}, {hi:.4g}]"
        )


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise InvalidArgumentError(name, f"must be in (0, 1], got {value}")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidArgumentError("batch_size", f"must be at least 1, got {batch_size}")


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel by the map, 0 = most salient: [..., H, W] -> int64 [..., H*W].

    Ties keep row-major order (stable sort), so the top-k set is unique.
    """
    flat = maps.reshape(*maps.shape[:-2], -1)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    arange = torch.arange(flat.shape[-1], device=flat.device).expand_as(order)
    ranks.scatter_(-1, order, arange)
    return ranks


def count_of_fraction(fraction: float, num_pixels: int) -> int:
    """Number of pixels in a fraction of the image: floor(f P + 1/2)."""
    return int(math.floor(fraction * num_pixels + 0.5))


def class_probabilities(
    forward: Forward,
    count: int,
    make_batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """softmax(forward(x))[target] for ``count`` images built chunk by chunk: make_batch(start, stop)
    returns (images [stop-start,3,H,W], targets [stop-start]). Returns float32 [count]."""
    _check_batch_size(batch_size)
    if count == 0:
        return torch.zeros(0)

    def probabilities(items: slice) -> torch.Tensor:
        batch, batch_targets = make_batch(items.start, items.stop)
        size = items.stop - items.start
        logits = torch.as_tensor(forward(batch)).to(device=batch.device, dtype=torch.float32)
        if logits.dim() != 2 or logits.shape[0] != size:
            raise InvalidArgumentError(
                "forward", f"returned shape {tuple(logits.shape)} for a batch of {size} images"
            )
        probs = torch.softmax(logits, dim=1)
        return probs.gather(1, batch_targets.reshape(-1, 1).to(probs.device)).squeeze(1)

    return run_in_chunks(probabilities, count, batch_size)


# ---------------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence
# ---------------------------------------------------------------------------------------------------


@dataclass
class ConfidenceResult:
    """Per-map class probabilities on the original and the perturbed image, and the derived scores.

    original      Y: softmax probability of the target class on the image
    perturbed     O: the same on the perturbed image
    drop          max(0, Y - O) / Y * 100   (Average Drop is its mean)
    increase      O > Y                     (Increase in Confidence is its mean, as a percentage)
    change        (O - Y) / Y * 100         signed relative change
    """

    original: torch.Tensor
    perturbed: torch.Tensor

    @property
    def drop(self) -> torch.Tensor:
        return (self.original - self.perturbed).clamp_min(0) / self.original.clamp_min(1e-12) * 100.0

    @property
    def increase(self) -> torch.Tensor:
        return self.perturbed > self.original

    @property
    def change(self) -> torch.Tensor:
        return (self.perturbed - self.original) / self.original.clamp_min(1e-12) * 100.0


def _confidence(
    forward: Forward,
    images: torch.Tensor,
    items: _Items,
    perturb: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    baseline: torch.Tensor | float,
    batch_size: int,
) -> ConfidenceResult:
    """Y on the unperturbed images (once per image/target) and O on perturb(image, map, baseline)."""
    base = _expand_baseline(baseline, images)
    idx, tg = items.image_index, items.targets
    count = len(idx)
    original = class_probabilities(
        forward, count, lambda a, b: (images[idx[a:b]], tg[a:b]), batch_size=batch_size
    )

    def perturbed_batch(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        sel = idx[a:b]
        return perturb(images[sel], items.maps[a:b], base[sel]), tg[a:b]

    perturbed = class_probabilities(forward, count, perturbed_batch, batch_size=batch_size)
    return ConfidenceResult(original.reshape(items.lead_shape), perturbed.reshape(items.lead_shape))


def explanation_map_confidence(
    forward: Forward,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    baseline: torch.Tensor | float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ConfidenceResult:
    """Average Drop and Increase in Confidence (Chattopadhyay et al., "Grad-CAM++: Generalized
    Gradient-based Visual Explanations for Deep Convolutional Networks", WACV 2018, section 4.1).

    The "explanation map" E = L ∘ I is the image multiplied pixel-wise by the map L in [0, 1]; here
    E = b + L * (x - b) (see the module docstring: with b the normalised black image this is exactly
    the pixels multiplied by the map). With Y the softmax probability of the target class on the image
    and O on E:

        Average Drop             = mean_i max(0, Y_i - O_i) / Y_i * 100     (lower is better)
        Increase in Confidence   = mean_i 1[O_i > Y_i] * 100                (higher is better)

    ``result.drop.mean()`` and ``result.increase.float().mean() * 100`` give the two numbers. Maps must
    be min-max normalised to [0, 1].
    """
    items = _flatten_items(images, maps, targets)
    _check_unit_range(items.maps, "Average Drop")

    def multiply(x: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b + m.unsqueeze(1) * (x - b)

    return _confidence(forward, images, items, multiply, baseline, batch_size)


def top_fraction_confidence(
    forward: Forward,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    fraction: float = 0.25,
    keep: bool = True,
    baseline: torch.Tensor | float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ConfidenceResult:
    """Confidence after keeping (``keep=True``) or removing (``keep=False``) the top ``fraction`` of
    pixels ranked by the map; every other / every ranked pixel becomes the baseline.

    This is the hard-mask form of Average Drop: Chattopadhyay et al. (Grad-CAM++, WACV 2018) and the
    "keep / remove top-k%" evaluations (e.g. Hooker et al., "A Benchmark for Interpretability Methods
    in Deep Neural Networks", NeurIPS 2019, which motivates removing the most important pixels). Report
    ``result.change`` (signed (O - Y) / Y * 100): for a faithful map, keeping the top 25 % keeps most of
    the confidence (close to 0, higher is better) and removing them destroys it (lower is better).
    """
    _check_fraction("fraction", fraction)
    items = _flatten_items(images, maps, targets)
    k = count_of_fraction(fraction, items.maps.shape[-1] * items.maps.shape[-2])

    def mask_top(x: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        top = (pixel_ranks(m) < k).reshape(m.shape).unsqueeze(1)
        return torch.where(top, x, b) if keep else torch.where(top, b, x)

    return _confidence(forward, images, items, mask_top, baseline, batch_size)


# ---------------------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# ---------------------------------------------------------------------------------------------------


@dataclass
class CurveResult:
    """Class probability along a deletion or insertion curve.

    fractions  [S+1]            fraction of pixels removed (deletion) or inserted (insertion) at step s
    curve      [..., S+1]       probability of the target class after step s (leading shape as the maps)
    auc        [...]            trapezoid-rule area under curve(fractions), in [0, 1]
    """

    fractions: torch.Tensor
    curve: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        return torch.trapezoid(self.curve, self.fractions.to(self.curve), dim=-1)


def deletion_insertion_curve(
    forward: Forward,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "deletion",
    steps: int = 32,
    baseline: torch.Tensor | float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CurveResult:
    """Deletion and insertion curves (Petsiuk et al., "RISE: Randomized Input Sampling for
    Explanation of Black-box Models", BMVC 2018, section 4.2).

    Pixels are taken in the map's order, most salient first, in ``steps`` equal steps: after step s,
    k_s = floor(s P / steps + 1/2) pixels of P are changed (all channels of a pixel together).

    deletion:  start from the image; changed pixels become the ``baseline`` (black in RISE).
               A sharp drop means the map found the evidence: lower AUC is better.
    insertion: start from the ``baseline`` (RISE: a blurred copy, ``blurred_images``); changed pixels
               take the image's values. A fast rise is good: higher AUC is better.

    The curve is the target's softmax probability after each step, s = 0..steps (steps + 1 points);
    AUC = trapezoid rule over the fraction k_s / P. All N*T*(steps+1) perturbed images run through
    ``forward`` in chunks of ``batch_size``, built lazily per chunk.
    """
    if mode not in ("deletion", "insertion"):
        raise InvalidArgumentError("mode", f"expected 'deletion' or 'insertion', got {mode!r}")
    items = _flatten_items(images, maps, targets)
    h, w = items.maps.shape[-2:]
    num_pixels = h * w
    if not 1 <= steps <= num_pixels:
        raise InvalidArgumentError(
            "steps", f"must be between 1 and the pixel count {num_pixels}, got {steps}"
        )
    counts = torch.tensor(
        [count_of_fraction(s / steps, num_pixels) for s in range(steps + 1)], device=items.maps.device
    )
    ranks = pixel_ranks(items.maps).reshape(-1, h, w)
    base = _expand_baseline(baseline, images)
    idx, tg = items.image_index, items.targets
    per_item = steps + 1

    def batch(a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.arange(a, b, device=items.maps.device)
        item, step = flat // per_item, flat % per_item
        changed = (ranks[item] < counts[step].reshape(-1, 1, 1)).unsqueeze(1)
        x, bl = images[idx[item]], base[idx[item]]
        out = torch.where(changed, bl, x) if mode == "deletion" else torch.where(changed, x, bl)
        return out, tg[item]

    probs = class_probabilities(forward, len(idx) * per_item, batch, batch_size=batch_size)
    curve = probs.reshape(*items.lead_shape, per_item)
    return CurveResult(counts.float() / num_pixels, curve)
