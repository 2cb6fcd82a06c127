"""Principal-component methods beyond Eigen-CAM: Eigen-Grad-CAM (the first principal component of
the gradient-weighted activations), Seg-Eigen-CAM (the same on the gradients' magnitudes) and
KPCA-CAM (the first kernel principal component of the activations). All read the one explain run.

Notation as in ``camserve.methods.gradient``; M [Z,K] is a layer's [K,h,w] tensor with one row per
pixel, and M_c = M - mean over the rows (centred per channel), as pytorch-grad-cam centres it.
"""

from __future__ import annotations

import torch

from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """[B,K,h,w] -> [B,Z,K] float64, NaN set to 0 and centred per channel (over the pixels)."""
    rows = x.flatten(2).transpose(1, 2).double().nan_to_num(0.0)
    return rows - rows.mean(dim=1, keepdim=True)


def _flip_to_mass(projection: torch.Tensor) -> torch.Tensor:
    """[B,Z]: each row negated where |min| > |max| (the sign of a principal component is arbitrary;
    Seg-Eigen-CAM, Chung & Ying 2025, eq. 13, turns it so the salient end is positive)."""
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    return torch.where(flip.unsqueeze(1), -projection, projection)


def principal_projection(x: torch.Tensor) -> torch.Tensor:
    """[B,h,w]: each [K,h,w] slice of ``x`` [B,K,h,w] projected on its first principal component,
    M_c v_1 (v_1 the first right singular vector of M_c), sign per :func:`_flip_to_mass`.

    M_c v_1 = s_1 u_1, so it comes from the eigendecomposition of the smaller of M_c M_c^T [Z,Z]
    and M_c^T M_c [K,K] (float64: squaring the condition number costs no accuracy)."""
    b, k, h, w = x.shape
    rows = _pixel_rows(x)  # [B,Z,K]
    if h * w <= k:
        values, vectors = torch.linalg.eigh(rows @ rows.transpose(1, 2))
        projection = vectors[:, :, -1] * values[:, -1:].clamp_min(0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(rows.transpose(1, 2) @ rows)
        projection = (rows @ vectors[:, :, -1:]).squeeze(-1)
    return _flip_to_mass(projection).reshape(b, h, w).to(x.dtype)


@register
class EigenGradCAM(CamMethod):
    """Eigen-Grad-CAM (pytorch-grad-cam's variant of Eigen-CAM, Muhammad & Yeasin, IJCNN 2020,
    arXiv:2008.00299): Eigen-CAM on the gradient-weighted activations, so the map is class
    discriminative::

        M   = (g^c * A) as [Z,K] rows of pixels, M_c = M - mean_rows(M)
        L^c = ReLU(s * M_c v_1)         v_1 first right singular vector of M_c, s = +-1 (below)

    The sign of v_1 is arbitrary (pytorch-grad-cam leaves it to LAPACK); s makes |max| >= |min|.
    """

    name = "eigengradcam"
    eigen_smoothable = False  # already a principal component (pytorch-grad-cam ignores it too)
    not_in_graph = "it needs an eigendecomposition (or SVD), which ONNX has no operator for"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        weighted = ctx.outputs.gradients * ctx.outputs.activations.unsqueeze(1)  # [N,T,K,h,w]
        projection = principal_projection(weighted.flatten(0, 1))
        return MethodMaps(projection.unflatten(0, weighted.shape[:2]).clamp_min(0))


@register
class SegEigenCAM(CamMethod):
    """Seg-Eigen-CAM (Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for
    Semantic Segmentation Models", Appl. Sci. 2025, 15(13), 7562; pytorch-grad-cam's
    ``SegEigenCAM``): Eigen-CAM on the activations weighted by the gradients' magnitudes (eq. 10),
    so negative evidence counts as much as positive, the component's sign turned so that the
    salient end is positive (eq. 13)::

        M   = (|g^c| * A) as [Z,K] rows of pixels, M_c = M - mean_rows(M)
        L^c = ReLU(s * M_c v_1)         v_1 first right singular vector of M_c, s: |max| >= |min|

    Made for region targets of segmentation models; it takes any target kind.
    """

    name = "segeigencam"
    eigen_smoothable = False  # already a principal component (pytorch-grad-cam ignores it too)
    not_in_graph = "it needs an eigendecomposition (or SVD), which ONNX has no operator for"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        weighted = ctx.outputs.gradients.abs() * ctx.outputs.activations.unsqueeze(1)  # [N,T,K,h,w]
        projection = principal_projection(weighted.flatten(0, 1))
        return MethodMaps(projection.unflatten(0, weighted.shape[:2]).clamp_min(0))


@register
class KPCACAM(CamMethod):
    """KPCA-CAM (Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models
    using Kernel PCA", MMSP 2024, arXiv:2410.00267): Eigen-CAM with kernel PCA, pytorch-grad-cam's
    defaults (sigmoid kernel, gamma = 1/K, coef0 = 1)::

        S    = tanh(gamma M_c M_c^T + coef0)                    [Z,Z], M_c as in Eigen-Grad-CAM
        S_c  = S - 1S - S1 + 1S1                                (1 = the [Z,Z] matrix of 1/Z)
        L    = ReLU(sqrt(lambda_1) u_1)                         (lambda_1, u_1) the top eigenpair of S_c

    u_1's sign as scikit-learn's KernelPCA fixes it: its largest-magnitude entry positive.
    Class-agnostic: every target of an image gets the same map.
    """

    name = "kpcacam"
    eigen_smoothable = False  # already a kernel principal component (as pytorch-grad-cam)
    not_in_graph = "it needs an eigendecomposition (or SVD), which ONNX has no operator for"
    coef0 = 1.0

    def compute(self, ctx: MethodContext) -> MethodMaps:
        activations = ctx.outputs.activations
        n, k, h, w = activations.shape
        rows = _pixel_rows(activations)  # [N,Z,K]
        kernel = torch.tanh(rows @ rows.transpose(1, 2) / k + self.coef0)
        kernel = kernel - kernel.mean(dim=1, keepdim=True)  # centring in feature space:
        kernel = kernel - kernel.mean(dim=2, keepdim=True)  # both means of the symmetric S
        values, vectors = torch.linalg.eigh(kernel)
        top = vectors[:, :, -1]  # [N,Z]
        largest = top.gather(1, top.abs().argmax(dim=1, keepdim=True))
        projection = top * torch.sign(largest) * values[:, -1:].clamp_min(0).sqrt()
        maps = projection.clamp_min(0).reshape(n, 1, h, w).to(activations.dtype)
        return MethodMaps(maps.expand(n, ctx.outputs.target_ids.shape[1], h, w).contiguous())
