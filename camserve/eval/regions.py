"""Region metrics: does the map of a region target fall inside the region's true mask?

For a dense (segmentation) model a target is a region of the output, ``Target(kind="region",
class_id=c, mask=m)`` or the pixels predicted as c (``predicted_region``). Its map is scored against
the true mask of what it explains:

    energy    the share of the map's energy inside the mask (the "energy-based pointing game" of
              Wang et al., Score-CAM, CVPR-W 2020, section 5.2, on a mask instead of a box):
              sum_{ij in mask} L_ij / sum_ij L_ij
    pointing  whether the map's maximum lies on the mask (Zhang et al.'s pointing game, with the
              object's pixels as the hit area), within ``tolerance`` pixels
    area      the mask's share of the image: what a map spread evenly scores on ``energy`` (the
              chance level the random baseline map hovers around)

Shared arguments:

    maps   [N,H,W] or [N,T,H,W] float, non-negative, in the masks' pixel frame
    masks  bool (or 0/1) of the maps' shape, or [N,H,W] for every target of an image
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError


def _check(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``masks`` as bool, broadcast to the maps' shape."""
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4) or not maps.is_floating_point():
        raise InvalidArgumentError("maps", "expected a floating point tensor [N,H,W] or [N,T,H,W]")
    masks = torch.as_tensor(masks, device=maps.device)
    if masks.dim() == 3 and maps.dim() == 4:
        masks = masks.unsqueeze(1)
    if masks.dim() != maps.dim() or masks.shape[0] != maps.shape[0] or masks.shape[-2:] != maps.shape[-2:]:
        raise InvalidArgumentError(
            "masks",
            f"has shape {list(masks.shape)}; the maps are {list(maps.shape)} "
            "(give [N,H,W] or the maps' shape)",
        )
    return (masks != 0).expand_as(maps)


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's sum inside its mask, in [0, 1]; a map that is zero everywhere scores 0."""
    inside = _check(maps, masks)
    if float(maps.min()) < 0:
        raise InvalidArgumentError("maps", "the energy inside a mask needs non-negative maps")
    total = maps.sum(dim=(-2, -1))
    in_mask = (maps * inside).sum(dim=(-2, -1))
    return torch.where(total > 0, in_mask / total.clamp_min(1e-30), torch.zeros_like(total))


def pointing_in_mask(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Whether each map's maximum (the first in row-major order) is on its mask or within
    ``tolerance`` pixels of a mask pixel (distance between pixel indices). A constant map has no
    maximum and an empty mask no hit area: both miss. Returns bool of the maps' leading shape."""
    inside = _check(maps, masks)
    if tolerance < 0:
        raise InvalidArgumentError("tolerance", f"must be non-negative, got {tolerance}")
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, h * w)
    peak = flat.argmax(dim=-1)
    constant = flat.amax(-1) <= flat.amin(-1)
    row = (peak // w).reshape(-1, 1, 1).float()
    col = (peak % w).reshape(-1, 1, 1).float()
    r = torch.arange(h, device=maps.device, dtype=torch.float32).reshape(1, h, 1)
    c = torch.arange(w, device=maps.device, dtype=torch.float32).reshape(1, 1, w)
    d2 = (r - row) ** 2 + (c - col) ** 2  # [M,H,W]: every pixel's distance to the map's peak
    near = ((d2 <= tolerance * tolerance) & inside.reshape(-1, h, w)).flatten(1).any(-1)
    return (near & ~constant).reshape(maps.shape[:-2])


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """Each mask's share of the image [...]: the energy a uniform map has inside it."""
    masks = torch.as_tensor(masks)
    return (masks != 0).float().mean(dim=(-2, -1))


def masks_on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Masks [...,H,W] (input pixels) on a dense output's [h',w'] grid: each cell's covered share of
    its pixels (area averaging), in [0, 1]; the masks as float when the grid is the image."""
    masks = torch.as_tensor(masks).float()
    if tuple(masks.shape[-2:]) == tuple(grid):
        return masks
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:])
    return F.interpolate(flat, size=tuple(grid), mode="area").reshape(*lead, *grid)
