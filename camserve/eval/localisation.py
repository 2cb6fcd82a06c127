"""Localisation metrics: does the map fall on the object?

Shared arguments:

    maps   [N,H,W] or [N,T,H,W] float, non-negative (CAM maps are ReLU'd), in the boxes' pixel frame
    boxes  a sequence of N tensors [M_i,4] (x0, y0, x1, y1): the true boxes of image i, half-open pixel
           coordinates (pixel (row r, column c) is inside when x0 <= c < x1 and y0 <= r < y1)

Results have the maps' leading shape ([N] or [N,T]); every map of image i is scored against image i's
boxes. Pure torch and batched: thresholding, connected components and boxes run on whole batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError
from camserve.eval.faithfulness import count_of_fraction, pixel_ranks

#: Zhang et al.'s pointing-game tolerance, in pixels at this reference image size (short side).
POINTING_TOLERANCE_PX = 15.0
POINTING_REFERENCE_SIZE = 224


def _check_maps(maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
        raise InvalidArgumentError("maps", "expected a tensor [N,H,W] or [N,T,H,W]")
    if not maps.is_floating_point():
        raise InvalidArgumentError("maps", f"expected floating point values, got {maps.dtype}")


def _flat(maps: torch.Tensor) -> torch.Tensor:
    return maps.reshape(-1, *maps.shape[-2:])


def pad_boxes(
    boxes: Sequence[torch.Tensor], n: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-image box lists as one tensor [N,M,4] (float) and a validity mask [N,M]."""
    if len(boxes) != n:
        raise InvalidArgumentError("boxes", f"has {len(boxes)} entries for {n} images")
    tensors = []
    for i, b in enumerate(boxes):
        t = torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) if len(b) else None
        if t is None:
            t = torch.zeros(0, 4, device=device)
        if bool(((t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])).any()):
            raise InvalidArgumentError("boxes", f"image {i} has a box with x1 < x0 or y1 < y0")
        tensors.append(t)
    m = max((len(t) for t in tensors), default=0)
    out = torch.zeros(n, max(m, 1), 4, device=device)
    valid = torch.zeros(n, max(m, 1), dtype=torch.bool, device=device)
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
        valid[i, : len(t)] = True
    return out, valid


def _per_item(
    boxes: torch.Tensor, valid: torch.Tensor, maps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat image-level boxes for each of the T maps of an image: [N*T,M,4], [N*T,M]."""
    t = maps.shape[1] if maps.dim() == 4 else 1
    return boxes.repeat_interleave(t, 0), valid.repeat_interleave(t, 0)


# ---------------------------------------------------------------------------------------------------
# Boxes from maps
# ---------------------------------------------------------------------------------------------------


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """The tightest half-open box (x0, y0, x1, y1) around the true pixels of masks [...,H,W] -> [...,4];
    an empty mask gives the empty box (0, 0, 0, 0)."""
    h, w = mask.shape[-2:]
    rows, cols = mask.any(dim=-1), mask.any(dim=-2)  # [...,H], [...,W]
    r = torch.arange(h, device=mask.device)
    c = torch.arange(w, device=mask.device)
    y0 = torch.where(rows, r, h).amin(-1)
    y1 = torch.where(rows, r + 1, 0).amax(-1)
    x0 = torch.where(cols, c, w).amin(-1)
    x1 = torch.where(cols, c + 1, 0).amax(-1)
    box = torch.stack([x0, y0, x1, y1], dim=-1).float()
    return torch.where(mask.flatten(-2).any(-1, keepdim=True), box, torch.zeros_like(box))


def top_fraction_mask(maps: torch.Tensor, fraction: float = 0.25) -> torch.Tensor:
    """The top ``fraction`` of pixels by the map (floor(f P + 1/2) pixels, ties in row-major order)."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidArgumentError("fraction", f"must be in (0, 1], got {fraction}")
    h, w = maps.shape[-2:]
    k = max(1, count_of_fraction(fraction, h * w))
    return (pixel_ranks(maps) < k).reshape(maps.shape)


def top_fraction_box(maps: torch.Tensor, fraction: float = 0.25) -> torch.Tensor:
    """Box enclosing the top ``fraction`` (default 25 %) of the map's pixels: [...,H,W] -> [...,4].

    A simple, threshold-free box: all the most salient pixels, however scattered, are inside it.
    """
    _check_maps(maps)
    return mask_box(top_fraction_mask(maps, fraction))


def _run_max(labels: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Every maximal run of foreground pixels along the last dimension takes the largest label in it.

    A segmented running maximum: run r of a line is offset by r * (max label + 1), so a running
    maximum (forwards, then backwards with runs numbered from the other end) never carries a value
    across runs.
    """
    stride = int(labels.max()) + 1
    previous = F.pad(fg[..., :-1], (1, 0), value=False)
    forward_run = torch.cumsum(fg & ~previous, dim=-1)
    following = F.pad(fg[..., 1:], (0, 1), value=False)
    backward_run = torch.cumsum((fg & ~following).flip(-1), dim=-1).flip(-1)
    ahead = torch.cummax(labels + forward_run * stride, dim=-1).values - forward_run * stride
    behind = (
        torch.cummax((labels + backward_run * stride).flip(-1), dim=-1).values.flip(-1)
        - backward_run * stride
    )
    return torch.maximum(ahead, behind) * fg


def _neighbourhood_max(labels: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3x3 neighbourhood (zero outside the image), separably."""
    rows = F.pad(labels, (1, 1))
    rows = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
    cols = F.pad(rows, (0, 0, 1, 1))
    return torch.maximum(torch.maximum(cols[..., :-2, :], cols[..., 1:-1, :]), cols[..., 2:, :])


def connected_components(mask: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """8-connected components of boolean masks [B,H,W] -> int64 labels [B,H,W] (0 = background; a
    component's label is 1 + the largest row-major index of its pixels, so labels are not consecutive
    but do not depend on the algorithm).

    backend "propagate": label propagation, batched on any device. Every pixel starts with its own
    label; each round, every horizontal run and then every vertical run of foreground takes its
    largest label (a long straight stretch in one step), then every pixel takes the largest label of
    its 3x3 neighbourhood (the diagonal links), until nothing changes: a handful of rounds for the
    blob-shaped masks of CAM maps.
    backend "scipy": ``scipy.ndimage.label`` (union-find in C), relabelled to the same convention; on
    a CPU it is about a hundred times faster than many small torch ops.
    "auto" picks scipy for CPU tensors and propagation for the rest (CUDA).
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise InvalidArgumentError("mask", "expected a boolean tensor [B,H,W]")
    if backend == "auto":
        backend = "scipy" if mask.device.type == "cpu" else "propagate"
    if backend == "scipy":
        return _components_scipy(mask)
    if backend == "propagate":
        return _components_propagate(mask)
    raise InvalidArgumentError("backend", f"expected 'auto', 'scipy' or 'propagate', got {backend!r}")


def _components_scipy(mask: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage

    b, h, w = mask.shape
    # one call for the batch: a 3-D structure that links nothing across the batch axis
    structure = torch.zeros(3, 3, 3, dtype=torch.bool)
    structure[1] = True
    consecutive, count = ndimage.label(mask.cpu().numpy(), structure=structure.numpy())
    labels = torch.from_numpy(consecutive).to(torch.int64).reshape(b, -1)
    index = torch.arange(1, h * w + 1).expand(b, -1)
    # per component, 1 + its largest row-major index
    top = torch.zeros(count + 1, dtype=torch.int64).scatter_reduce(
        0, labels.reshape(-1), index.reshape(-1), reduce="amax"
    )
    top[0] = 0
    return top[labels].reshape(b, h, w).to(mask.device)


def _components_propagate(mask: torch.Tensor) -> torch.Tensor:
    b, h, w = mask.shape
    fg_t = mask.transpose(-1, -2).contiguous()
    labels = torch.arange(1, h * w + 1, device=mask.device).reshape(1, h, w) * mask
    for _ in range(h * w):
        grown = _run_max(labels, mask)
        grown = _run_max(grown.transpose(-1, -2).contiguous(), fg_t).transpose(-1, -2)
        grown = _neighbourhood_max(grown) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels


def largest_component_mask(maps: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """The largest 8-connected segment of {map >= threshold * max(map), map > 0}: [...,H,W] -> bool.

    Ties between equally large segments go to the one with the larger label (the one reaching further
    down/right). A map that is zero everywhere has no segment.
    """
    if maps.dim() < 2 or not maps.is_floating_point():
        raise InvalidArgumentError("maps", "expected a floating point tensor [...,H,W]")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidArgumentError("threshold", f"must be in [0, 1], got {threshold}")
    flat = _flat(maps)
    peak = flat.amax(dim=(-2, -1), keepdim=True)
    fg = (flat >= threshold * peak) & (flat > 0)
    labels = connected_components(fg)
    b, h, w = labels.shape
    offsets = torch.arange(b, device=labels.device).reshape(b, 1) * (h * w + 1)
    sizes = torch.bincount((labels.reshape(b, -1) + offsets).reshape(-1), minlength=b * (h * w + 1))
    sizes = sizes.reshape(b, h * w + 1)
    sizes[:, 0] = 0
    # argmax over flipped sizes returns the largest label among ties
    best = h * w - sizes.flip(-1).argmax(dim=-1)
    largest = (labels == best.reshape(b, 1, 1)) & fg
    return largest.reshape(maps.shape)


def largest_component_box(maps: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """Box of the largest connected segment of the map thresholded at ``threshold`` x its max.

    This is the box of Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017, section 4.1: "we binarize the map with a threshold of 15 %
    of the max intensity, then draw a bounding box around the single largest segment". Segments are
    8-connected. [...,H,W] -> [...,4]; a map that is zero everywhere gives the empty box.
    """
    _check_maps(maps)
    return mask_box(largest_component_mask(maps, threshold))


# ---------------------------------------------------------------------------------------------------
# IoU and localisation error
# ---------------------------------------------------------------------------------------------------


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of half-open boxes a [...,A,4] and b [...,B,4] -> [...,A,B].

    Area is the pixel count (x1 - x0) * (y1 - y0); an empty union gives 0.
    """
    a = a.float().unsqueeze(-2)
    b = b.float().unsqueeze(-3)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def best_box_iou(pred_boxes: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """IoU of each predicted box [N,4] or [N,T,4] with the best-matching true box of its image.

    An image without true boxes scores 0.
    """
    n = pred_boxes.shape[0]
    true, valid = pad_boxes(boxes, n, device=pred_boxes.device)
    lead = pred_boxes.shape[:-1]
    flat = pred_boxes.reshape(-1, 4)
    t = flat.shape[0] // n
    true, valid = true.repeat_interleave(t, 0), valid.repeat_interleave(t, 0)
    iou = pairwise_iou(flat.unsqueeze(1), true).squeeze(1)  # [N*T, M]
    return torch.where(valid, iou, torch.zeros_like(iou)).amax(-1).reshape(lead)


def box_iou(
    maps: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    method: str = "top_fraction",
    fraction: float = 0.25,
    threshold: float = 0.15,
) -> torch.Tensor:
    """IoU between a box drawn from each map and the best-matching true box of its image.

    method="top_fraction": the box enclosing the top ``fraction`` (25 %) of pixels (``top_fraction_box``).
    method="component":    the box of the largest segment of map >= ``threshold`` (15 %) x max
                           (``largest_component_box``; the Grad-CAM paper's box).
    """
    _check_maps(maps)
    if method == "top_fraction":
        pred = top_fraction_box(maps, fraction)
    elif method == "component":
        pred = largest_component_box(maps, threshold)
    else:
        raise InvalidArgumentError("method", f"expected 'top_fraction' or 'component', got {method!r}")
    return best_box_iou(pred, boxes)


def localisation_error(
    maps: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    predicted: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.15,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """Top-1 localisation error of Selvaraju et al. (Grad-CAM, ICCV 2017, section 4.1), following the
    ILSVRC protocol (Russakovsky et al., IJCV 2015).

    ``maps`` [N,H,W] are the maps of the *predicted* classes ``predicted`` [N]; the box is the largest
    segment above ``threshold`` x max (``largest_component_box``). An image is an error when the
    predicted class differs from ``labels`` [N] or the box's IoU is below ``iou_threshold`` with every
    true box. Returns bool [N]; its mean is the error rate.
    """
    _check_maps(maps)
    if maps.dim() != 3:
        raise InvalidArgumentError("maps", "localisation error takes one map per image [N,H,W]")
    predicted, labels = torch.as_tensor(predicted), torch.as_tensor(labels)
    if predicted.shape != labels.shape or predicted.shape != maps.shape[:1]:
        raise InvalidArgumentError(
            "predicted",
            f"predicted {tuple(predicted.shape)} and labels "
            f"{tuple(labels.shape)} must both be [N] with N = {maps.shape[0]}",
        )
    iou = box_iou(maps, boxes, method="component", threshold=threshold)
    return localisation_error_from_iou(iou, predicted, labels, iou_threshold)


def localisation_error_from_iou(
    iou: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """``localisation_error`` when the IoU of the predicted class's box is already known: wrong class
    or IoU below ``iou_threshold``."""
    wrong_class = torch.as_tensor(predicted).to(iou.device) != torch.as_tensor(labels).to(iou.device)
    return wrong_class | (iou < iou_threshold)


# ---------------------------------------------------------------------------------------------------
# Pointing games
# ---------------------------------------------------------------------------------------------------


def default_pointing_tolerance(height: int, width: int) -> float:
    """15 px at a 224-pixel short side, scaled linearly: 15 * min(H, W) / 224 (4.29 px at 64 px)."""
    return POINTING_TOLERANCE_PX * min(height, width) / POINTING_REFERENCE_SIZE


def pointing_game(
    maps: torch.Tensor, boxes: Sequence[torch.Tensor], tolerance: float | None = None
) -> torch.Tensor:
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    A hit when the map's maximum lies inside a true box or within ``tolerance`` pixels of one. Zhang et
    al. allow 15 pixels on the original images; camserve scales that to the maps' size as
    15 * min(H, W) / 224 (``default_pointing_tolerance``: 224 px being the usual classifier input), so
    the tolerance is the same fraction of the image at any resolution. Distance is measured between
    pixel indices: a pixel inside the box is at 0, its outside neighbour at 1. The maximum is the first
    in row-major order; a constant map has no maximum and is a miss. Returns bool, hit rate = mean.
    """
    _check_maps(maps)
    h, w = maps.shape[-2:]
    if tolerance is None:
        tolerance = default_pointing_tolerance(h, w)
    if tolerance < 0:
        raise InvalidArgumentError("tolerance", f"must be non-negative, got {tolerance}")
    flat = _flat(maps).reshape(-1, h * w)
    peak = flat.argmax(dim=-1)
    constant = flat.amax(-1) <= flat.amin(-1)
    row, col = (peak // w).float(), (peak % w).float()
    true, valid = pad_boxes(boxes, maps.shape[0], device=maps.device)
    true, valid = _per_item(true, valid, maps)
    x0, y0, x1, y1 = true.unbind(-1)  # [M_items, M]
    col, row = col.unsqueeze(-1), row.unsqueeze(-1)
    dx = torch.maximum(torch.maximum(x0 - col, col - (x1 - 1)), torch.zeros_like(x0))
    dy = torch.maximum(torch.maximum(y0 - row, row - (y1 - 1)), torch.zeros_like(y0))
    nonempty = (x1 > x0) & (y1 > y0)
    near = (dx * dx + dy * dy <= tolerance * tolerance) & valid & nonempty
    return (near.any(-1) & ~constant).reshape(maps.shape[:-2])


def boxes_mask(
    boxes: Sequence[torch.Tensor], height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """Union of each image's boxes as a boolean mask [N,H,W]."""
    true, valid = pad_boxes(boxes, len(boxes), device=device)
    r = torch.arange(height, device=device).reshape(1, 1, -1, 1).float()
    c = torch.arange(width, device=device).reshape(1, 1, 1, -1).float()
    x0, y0, x1, y1 = (v.reshape(*v.shape, 1, 1) for v in true.unbind(-1))
    inside = (c >= x0) & (c < x1) & (r >= y0) & (r < y1) & valid.reshape(*valid.shape, 1, 1)
    return inside.any(dim=1)


def energy_pointing_game(maps: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks", CVPR Workshops 2020, section 5.2): the share of the map's energy
    inside the true boxes,

        proportion = sum_{(i,j) in union of boxes} L_ij / sum_{(i,j)} L_ij,

    over the union so that overlapping boxes count once. Maps must be non-negative; a map that is
    zero everywhere has no energy inside any box and scores 0. Returns float in [0, 1].
    """
    _check_maps(maps)
    if float(maps.min()) < 0:
        raise InvalidArgumentError("maps", "the energy pointing game needs non-negative maps")
    h, w = maps.shape[-2:]
    inside = boxes_mask(boxes, h, w, device=maps.device)
    if maps.dim() == 4:
        inside = inside.unsqueeze(1)
    total = maps.sum(dim=(-2, -1))
    in_box = (maps * inside).sum(dim=(-2, -1))
    return torch.where(total > 0, in_box / total.clamp_min(1e-30), torch.zeros_like(total))


def instance_coverage(
    maps: torch.Tensor, boxes: Sequence[torch.Tensor], level: float = 0.5, contrast: float = 2.0
) -> torch.Tensor:
    """Fraction of an image's true boxes (object instances) that the map lights up. A box is lit when

        max_{box} L >= level * max L            (as strong as the strongest evidence, within 50 %)
        and mean_{box} L > contrast * mean_{outside every box} L     (brighter than the background)

    The first condition is the claim of Chattopadhyay et al. (Grad-CAM++, WACV 2018, section 3):
    Grad-CAM++ highlights every instance of a class where Grad-CAM favours one. The second keeps maps
    that light up everything from scoring (a random map reaches 50 % of its max in almost any box);
    it is skipped when the boxes cover the whole image. A map that is zero everywhere lights nothing;
    an image without boxes scores 0. Returns float in [0, 1].
    """
    _check_maps(maps)
    if not 0.0 < level <= 1.0:
        raise InvalidArgumentError("level", f"must be in (0, 1], got {level}")
    if contrast < 0:
        raise InvalidArgumentError("contrast", f"must be non-negative, got {contrast}")
    h, w = maps.shape[-2:]
    true, valid = pad_boxes(boxes, maps.shape[0], device=maps.device)
    true, valid = _per_item(true, valid, maps)
    flat = _flat(maps).unsqueeze(1)  # [I,1,H,W]
    r = torch.arange(h, device=maps.device).reshape(1, 1, -1, 1).float()
    c = torch.arange(w, device=maps.device).reshape(1, 1, 1, -1).float()
    x0, y0, x1, y1 = (v.reshape(*v.shape, 1, 1) for v in true.unbind(-1))
    inside = (c >= x0) & (c < x1) & (r >= y0) & (r < y1) & valid.reshape(*valid.shape, 1, 1)  # [I,M,H,W]
    in_box_max = torch.where(inside, flat, torch.full_like(flat, -torch.inf)).amax(dim=(-2, -1))  # [I,M]
    in_box_mean = (flat * inside).sum(dim=(-2, -1)) / inside.sum(dim=(-2, -1)).clamp_min(1)
    outside = ~inside.any(dim=1, keepdim=True)  # [I,1,H,W]
    outside_count = outside.sum(dim=(-2, -1))
    outside_mean = (flat * outside).sum(dim=(-2, -1)) / outside_count.clamp_min(1)  # [I,1]
    peak = flat.amax(dim=(-2, -1))  # [I,1]
    brighter = (in_box_mean > contrast * outside_mean) | (outside_count == 0)
    lit = (in_box_max >= level * peak) & brighter & (peak > 0) & valid & inside.any(dim=(-2, -1))
    share = lit.sum(-1).float() / valid.sum(-1).clamp_min(1).float()
    return share.reshape(maps.shape[:-2])
