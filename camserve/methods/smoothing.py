"""The two smoothing options of pytorch-grad-cam's ``BaseCAM``, for every method whose map is a
weighted sum of the target layer's activations.

eigen_smooth (``ExplainOptions.eigen_smooth``): instead of summing the weighted activations
M_k = w_k A^k (or, for the element-wise methods, M_k = ReLU(g^k) A^k / g^k A^k) over the channels,
project them on their first principal component (pytorch-grad-cam's ``get_2d_projection``)::

    M [Z,K]   the weighted activations, one row per pixel (Z = h*w), one column per channel
    Mc        M with each column's mean over the pixels subtracted
    L         ReLU(s * Mc v_1)          v_1: Mc's first right singular vector, s = +-1

The sign of a singular vector is arbitrary (pytorch-grad-cam keeps whatever LAPACK returns); camserve
picks s so that the projection agrees with the map it smooths: sum_ij (Mc v_1)_ij (sum_k M_k)_ij >= 0.

aug_smooth (``ExplainOptions.aug_smooth``): pytorch-grad-cam's test-time augmentation (ttach's
HorizontalFlip x Multiply(0.9, 1, 1.1)). Each image runs as 6 copies, flipped left-right or not
times the preprocessed input scaled by each of ``defaults.AUG_FACTORS``; every copy's map is
min-max normalised at the output size, flipped back, and the 6 maps are averaged. The copies are
more images of the same explain run (``augment``); ``deaugment`` folds their maps back.
"""

from __future__ import annotations

import torch

from camserve import defaults


def principal_maps(weighted: torch.Tensor) -> torch.Tensor:
    """ReLU(s * Mc v_1) [..., h, w] of weighted activations [..., K, h, w] (see the module docstring)."""
    *lead, k, h, w = weighted.shape
    m = weighted.reshape(-1, k, h * w).transpose(1, 2).double().nan_to_num(0.0)  # [B,Z,K]
    centred = m - m.mean(dim=1, keepdim=True)
    # The top singular pair from the smaller Gram matrix, in float64 (the squared condition number
    # costs no accuracy there): Mc v_1 = sigma_1 u_1.
    if h * w <= k:
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # [B,Z,Z], ascending
        projection = vectors[:, :, -1] * values[:, -1:].clamp_min(0.0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)  # [B,K,K]
        projection = (centred @ vectors[:, :, -1:]).squeeze(-1)
    agreement = (projection * m.sum(dim=2)).sum(dim=1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    return projection.clamp_min(0.0).to(weighted.dtype).reshape(*lead, h, w)


def channel_principal_maps(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`principal_maps` of w_k A^k for activations [N,K,h,w] and channel weights [N,T,K]."""
    weights = weights.to(activations.dtype)
    return principal_maps(activations.unsqueeze(1) * weights[..., None, None])


def augment(images: torch.Tensor) -> torch.Tensor:
    """[R*N,3,H,W]: R = 2 x len(AUG_FACTORS) copies of ``images`` [N,3,H,W], copy-major (all images
    of copy 0, then of copy 1, ...); copies 0..F-1 unflipped, F..2F-1 flipped, each scaled by the
    factors in order. The unflipped x1 copy is the image itself."""
    flipped = images.flip(-1)
    copies = [source * factor for source in (images, flipped) for factor in defaults.AUG_FACTORS]
    return torch.cat(copies)


def augmented_copies() -> int:
    """R, the number of copies :func:`augment` makes of each image."""
    return 2 * len(defaults.AUG_FACTORS)


def identity_copy() -> int:
    """Index of the unflipped x1 copy among the R (the clean image)."""
    return defaults.AUG_FACTORS.index(1.0)


def deaugment(maps: torch.Tensor, num_images: int) -> torch.Tensor:
    """[N,...,H,W]: the mean over the R copies of ``maps`` [R*N,...,H,W] (copy-major), each flipped
    copy flipped back first."""
    copies = maps.unflatten(0, (augmented_copies(), num_images))
    half = len(defaults.AUG_FACTORS)
    restored = torch.cat([copies[:half], copies[half:].flip(-1)])
    return restored.mean(dim=0)
