"""Gradient methods added after the seeds (pytorch-grad-cam's element-wise Grad-CAM, ShapleyCAM,
FinerCAM, RefineCAM). Notation as in ``camserve.methods.gradient``.
"""

from __future__ import annotations

import torch

from camserve import kernels
from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions
from camserve.errors import UnsupportedError
from camserve.kernels import reference
from camserve.methods import smoothing
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register
from camserve.methods.gradient import GradCAMPlusPlus, weight_rule_maps
from camserve.methods.target_kinds import TargetTable


@register
class GradCAMElementWise(CamMethod):
    """Element-wise Grad-CAM (pytorch-grad-cam's ``GradCAMElementWise``): HiRes-CAM with a ReLU on
    every channel's product, so channels that argue against the class cannot cancel others::

        L^c = sum_k ReLU(g^k * A^k)
    """

    name = "gradcamelementwise"
    layer_fusion = "mean"
    not_in_graph = ""

    def compute(self, ctx: MethodContext) -> MethodMaps:
        outputs = ctx.outputs
        if ctx.options.eigen_smooth:  # the first principal component of the ReLU'd products
            products = (outputs.gradients * outputs.activations.unsqueeze(1)).clamp_min(0)
            return MethodMaps(smoothing.principal_maps(products))
        return MethodMaps(self.graph_maps(outputs.activations, outputs.gradients, outputs.target_ids, None))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        return (gradients * activations.unsqueeze(1)).clamp_min(0).sum(dim=2)  # [N,T,K,h,w] -> [N,T,h,w]


@register
class ShapleyCAM(CamMethod):
    """ShapleyCAM (Cai, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261): Grad-CAM whose
    gradient is corrected by the Hessian-vector product, a second-order estimate of each channel's
    Shapley value::

        w_k^c = (1/Z) sum_ij (g^c - (1/2) H^c A)_ij^k        H^c = d^2 y^c / dA^2
        L^c   = ReLU(sum_k w_k^c A^k)

    H^c A is zero when the layers after the target layer are piecewise linear in A; camserve knows
    that for sure only for heads that are global average pooling followed by one linear layer (the
    model directory then has ``cam_weights``), where ShapleyCAM is Grad-CAM. Other heads need a
    Hessian-vector-product graph that the exporter does not write yet, so they are refused.
    """

    name = "shapleycam"
    requires = frozenset({"cam_weights"})
    weight_rules = ("gradcam",)
    cost = "nothing beyond the shared explain run (GAP -> linear heads only: H A = 0 there)"
    not_in_graph = ""
    logit_targets_only = True  # H A = 0 holds for a logit, not for a softmax or sigmoid of it

    @staticmethod
    def _no_hessian(model: str) -> UnsupportedError:
        return UnsupportedError(
            f"methods: 'shapleycam' needs the Hessian-vector product of the layers after the target "
            f"layer; {model} has a head other than global average pooling -> linear (where it is "
            f"zero), and no graph for it is exported"
        )

    def compute(self, ctx: MethodContext) -> MethodMaps:
        if ctx.cam_weights is None:
            raise self._no_hessian(f"model {ctx.model_name!r}")
        return MethodMaps(weight_rule_maps(ctx, "gradcam"))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        if class_weights is None:
            raise self._no_hessian("this model")
        return reference.gradient_weighted_cam(activations, gradients, "gradcam")


@register
class FinerCAM(CamMethod):
    """Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for
    Visual Explanation", CVPR 2025, arXiv:2501.11309): Grad-CAM of the target's logit minus those of
    the D most similar classes d_1..d_D (the D classes whose logits are nearest y^c), weighted by
    their softmax probabilities p (held constant, as in the paper)::

        y_fine = sum_j p_dj (y^c - alpha y^dj) / (sum_j p_dj + 1e-9)
        g_fine = dy_fine/dA = sum_j p_dj (g^c - alpha g^dj) / (sum_j p_dj + 1e-9)
        L^c    = ReLU(sum_k mean_ij(g_fine^k) A^k)

    D = 3 and alpha = 1 (pytorch-grad-cam's defaults). The gradients of the D comparison classes of
    every target come from one more explain run (D*T targets per image), after the shared run's
    logits named them.
    """

    name = "finercam"
    aug_smoothable = False  # pytorch-grad-cam's FinerCAM has no aug_smooth
    comparisons = 3
    alpha = 1.0
    cost = "one more explain run with 3*T targets per image (the comparison classes' gradients)"
    not_in_graph = "it runs the explain graph again for the comparison classes' gradients"
    logit_targets_only = True  # compares the target's logit with the nearest classes' logits

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        return {"finercam comparison explain": 1}

    def extra_gradients(self, options: ExplainOptions) -> int:
        return self.comparisons  # the D comparison classes' gradients of every target

    def compute(self, ctx: MethodContext) -> MethodMaps:
        outputs = ctx.outputs
        activations = outputs.activations
        logits = outputs.logits.to(activations.device)
        target_ids = outputs.target_ids.to(activations.device)
        n, t = target_ids.shape
        d = min(self.comparisons, logits.shape[1] - 1)
        if d == 0:  # one class: nothing to compare with, y_fine = 0
            return MethodMaps(activations.new_zeros(n, t, *activations.shape[-2:]))
        distance = (logits.unsqueeze(1) - logits.gather(1, target_ids).unsqueeze(-1)).abs()  # [N,T,C]
        distance.scatter_(2, target_ids.unsqueeze(-1), float("inf"))
        similar = distance.topk(d, dim=2, largest=False).indices  # [N,T,D], nearest first
        comparison_targets = TargetTable.of_ids(similar.flatten(1).cpu())  # [N,T*D] class logits
        gradients = run_in_chunks(
            lambda items: ctx.runner.explain(ctx.images[items], comparison_targets.rows(items)).gradients,
            n,
            ctx.runtime.max_graph_batch,
        ).to(activations.device)
        gradients = gradients.unflatten(1, (t, d))  # [N,T,D,K,h,w]
        p = torch.softmax(logits, dim=1).unsqueeze(1).expand(n, t, -1).gather(2, similar)  # [N,T,D]
        p = p.to(gradients.dtype)[..., None, None, None]
        main = outputs.gradients.unsqueeze(2)
        fine = (p * (main - self.alpha * gradients)).sum(dim=2) / (p.sum(dim=2) + 1e-9)
        if ctx.options.eigen_smooth:
            return MethodMaps(self.weighted_maps(ctx, fine.mean(dim=(-2, -1))))
        return MethodMaps(kernels.gradient_weighted_cam(activations, fine, "gradcam", backend=ctx.backend))


@register
class RefineCAM(CamMethod):
    """RefineCAM (pytorch-grad-cam's ``RefineCAM``, arXiv:2605.14641): the element-wise product of
    the Grad-CAM++ maps of several target layers, each min-max normalised and upsampled to the
    output size, which keeps only what every layer agrees on::

        L^c = prod_l minmax(up(minmax(L_gradcam++^(c,l))))

    (``layer_fusion`` "product", compute.py's ``layer_maps``). With one target layer the product
    has one factor and the map is Grad-CAM++'s.
    """

    name = "refinecam"
    layer_fusion = "product"
    aug_smoothable = False  # pytorch-grad-cam's RefineCAM has no aug_smooth
    weight_rules = ("gradcam++",)
    not_in_graph = ""

    def compute(self, ctx: MethodContext) -> MethodMaps:
        return MethodMaps(weight_rule_maps(ctx, "gradcam++"))  # shared with gradcam++ when both are asked for

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """One exported layer: Grad-CAM++'s map."""
        return GradCAMPlusPlus().graph_maps(activations, gradients, target_ids, class_weights)
