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
    gradcam++: alpha_ij^k = g^2 / (2 g^2 + sum_ab A_ab^k g^3), 0 where the denominator is 0
               (that is where g = 0); w_k = sum_ij alpha_ij^k ReLU(g_ij^k)
    xgradcam:  w_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k, 0 where sum_ab A_ab^k = 0
    """
    g = gradients
    a = activations.unsqueeze(1)  # [N,1,K,h,w]
    if method == "gradcam":
        return g.mean(dim=(-2, -1))
    if method == "gradcam++":
        g2 = g * g
        sum_a = a.sum(dim=(-2, -1), keepdim=True)
        denom = 2.0 * g2 + sum_a * g2 * g
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
        return (alpha * g.clamp_min(0)).sum(dim=(-2, -1))
    if method == "xgradcam":
        sum_a = a.sum(dim=(-2, -1), keepdim=True)
        safe = torch.where(sum_a != 0, sum_a, 1.0)
        return torch.where(sum_a != 0, a * g / safe, 0.0).sum(dim=(-2, -1))
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
        out = torch.where(rng > eps, (out - lo) / torch.where(rng > eps, rng, 1.0), 0.0)
    if to_uint8:
        if not normalize:
            raise ValueError("uint8 output needs normalised maps")
        out = torch.round(out * 255.0).to(torch.uint8)
    return out
