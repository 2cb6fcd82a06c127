"""Reference implementations (plain torch, any device) of the CAM maths the Triton kernels fuse.

These define the numbers: the Triton kernels in this package must match them to 1e-5.
Shapes: A activations [N,K,h,w]; G gradients [N,T,K,h,w]; w channel weights [N,T,K]; maps [N,T,h,w].
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

WeightMethod = Literal["gradcam", "gradcam++", "xgradcam"]
WEIGHT_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam")


def channel_weights(activations: torch.Tensor, gradients: torch.Tensor, method: WeightMethod) -> torch.Tensor:
    """Per-channel weights [N,T,K] from one spatial reduction of A and G.

    gradcam:   w_k = mean_ij g_ij^k
    gradcam++: alpha_ij^k = g^2 / (2 g^2 + sum_ab A_ab^k g^3); w_k = sum_ij alpha_ij^k ReLU(g_ij^k),
               evaluated as sum_ij ReLU(g) / (2 + S g) with S = sum_ab A_ab^k (the same number:
               g^2 cancels where ReLU(g) > 0); a term is 0 where 2 + S g = 0
    xgradcam:  w_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k, 0 where sum_ab A_ab^k = 0
    """
    g = gradients
    if method == "gradcam":
        return g.mean(dim=(-2, -1))
    sum_a = activations.sum(dim=(-2, -1)).unsqueeze(1)  # [N,1,K]
    if method == "gradcam++":
        # Where ReLU(g) > 0, alpha ReLU(g) = g^2 g / (g^2 (2 + S g)) = ReLU(g) / (2 + S g): the g^2
        # cancels, which saves the g^2 and g^3 passes and keeps g^2 of tiny gradients from
        # underflowing to a zero weight. Where g <= 0 the term is 0 whatever alpha is.
        relu_g = g.clamp_min(0)
        denom = (relu_g * sum_a[..., None, None]).add_(2.0)
        if bool((sum_a < 0).any()):  # only a negative channel sum can make 2 + S g vanish
            denom.masked_fill_(denom == 0, float("inf"))  # ReLU(g) / inf = 0
        return relu_g.div_(denom).sum(dim=(-2, -1))
    if method == "xgradcam":
        # sum_ij A g as one batched contraction, then the division by the channel sum.
        n, t, k = g.shape[:3]
        sums = torch.einsum("nkp,ntkp->ntk", activations.reshape(n, k, -1), g.reshape(n, t, k, -1))
        return torch.where(sum_a != 0, sums / torch.where(sum_a != 0, sum_a, 1.0), 0.0)
    raise ValueError(f"unknown weight method {method!r}; known: {', '.join(WEIGHT_METHODS)}")


def weighted_sum_relu(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A^k): [N,K,h,w] x [N,T,K] -> [N,T,h,w]."""
    return torch.einsum("ntk,nkhw->nthw", weights, activations).clamp_min(0)


def gradient_weighted_cam(
    activations: torch.Tensor, gradients: torch.Tensor, method: WeightMethod
) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) with w = channel_weights(A, G, method): -> [N,T,h,w]."""
    return weighted_sum_relu(activations, channel_weights(activations, gradients, method))


def elementwise_sum_relu(
    activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool
) -> torch.Tensor:
    """Per-pixel weighting: ReLU(sum_k f(g^k) * A^k) -> [N,T,h,w].

    relu_gradients=True is Layer-CAM (f = ReLU); False is HiRes-CAM (f = identity).
    """
    g = gradients.clamp_min(0) if relu_gradients else gradients
    return (g * activations.unsqueeze(1)).sum(dim=2).clamp_min(0)


def upsample_normalize(
    maps: torch.Tensor,
    size: tuple[int, int] | None,
    normalize: bool = True,
    eps: float = 1e-7,
    to_uint8: bool = False,
) -> torch.Tensor:
    """Bilinear upsampling (half-pixel centres, ``align_corners=False``) then per-map min-max.

    maps [N,T,h,w] -> [N,T,H,W]; size None keeps the feature resolution.
    Normalised map = (m - min) / (max - min) where max - min > eps, else all zeros (a constant
    map carries no location). to_uint8 rounds the normalised map to round(255 * m).
    """
    out = maps
    if size is not None and tuple(size) != tuple(maps.shape[-2:]):
        n, t, h, w = maps.shape
        out = F.interpolate(
            maps.reshape(n * t, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False
        )
        out = out.reshape(n, t, *size)
    if normalize:
        lo = out.amin(dim=(-2, -1), keepdim=True)
        rng = out.amax(dim=(-2, -1), keepdim=True) - lo
        informative = rng > eps
        # Two passes over the full-size maps (subtract, divide in place); the constant maps are
        # zeroed through their [N,T,1,1] mask, not a third full-size pass.
        out = (out - lo).div_(torch.where(informative, rng, 1.0)).mul_(informative)
    if to_uint8:
        if not normalize:
            raise ValueError("uint8 output needs normalised maps")
        out = torch.round(out * 255.0).to(torch.uint8)
    return out


def quantize_uint8(maps: torch.Tensor) -> torch.Tensor:
    """Maps normalised to [0, 1] -> uint8 round(255 * clip(m, 0, 1)), ties to even (as numpy's rint)."""
    return torch.round(maps.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
