"""Gradient-based methods: all of them read the ONE explain run (activations A and gradients
g = dy^c/dA), so asking for several costs about as much as asking for one.

Notation: A^k [h,w] the k-th channel of the target layer's output, g^k = dy^c/dA^k where y^c is the
class's pre-softmax score (logit), i,j pixel indices, Z = h*w.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from camserve import kernels
from camserve.config import ExplainOptions
from camserve.kernels import WeightMethod, reference
from camserve.methods import smoothing
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


def weight_rule_maps(ctx: MethodContext, rule: WeightMethod) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) [N,T,h,w] for one channel-weight rule ("gradcam", "gradcam++",
    "xgradcam"), computed once per batch. When the batch's methods need several rules
    (``ctx.weight_rules``), all their weights come from one pass over A and g; with one rule, the
    weights and the weighted sum are one fused kernel."""
    acts, grads = ctx.outputs.activations, ctx.outputs.gradients

    def make() -> torch.Tensor:
        if len(ctx.weight_rules) <= 1 and not ctx.options.eigen_smooth:
            return kernels.gradient_weighted_cam(acts, grads, rule, backend=ctx.backend)
        weights = ctx.shared(
            "channel_weights",
            lambda: kernels.channel_weights_for_methods(
                acts, grads, list(ctx.weight_rules), backend=ctx.backend
            ),
        )
        return CamMethod.weighted_maps(ctx, weights[rule])

    return ctx.shared(f"weight_rule_maps:{rule}", make)


def gradcam_maps(ctx: MethodContext) -> torch.Tensor:
    """Grad-CAM maps [N,T,h,w] of ``ctx`` (guided Grad-CAM reuses them)."""
    return weight_rule_maps(ctx, "gradcam")


def elementwise_maps(
    ctx: MethodContext, activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool
) -> torch.Tensor:
    """ReLU(sum_k G^k * A^k) [N,T,h,w], G = ReLU(g) or g, or with ``options.eigen_smooth`` the first
    principal component of the products G^k * A^k (``camserve.methods.smoothing``)."""
    if ctx.options.eigen_smooth:
        weights = gradients.clamp_min(0.0) if relu_gradients else gradients
        return smoothing.principal_maps(activations.unsqueeze(1) * weights)
    return kernels.elementwise_sum_relu(activations, gradients, relu_gradients, backend=ctx.backend)


class ChannelWeightCAM(CamMethod):
    """A method of the form ReLU(sum_k w_k A^k) whose weights come from one spatial reduction of
    A and g (``kernels.channel_weights``); subclasses only name their weight rule."""

    not_in_graph = ""
    layer_fusion = "mean"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        (rule,) = self.weight_rules
        return MethodMaps(weight_rule_maps(ctx, rule))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        (rule,) = self.weight_rules
        return reference.gradient_weighted_cam(activations, gradients, rule)


@register
class GradCAM(ChannelWeightCAM):
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017, arXiv:1610.02391)::

        w_k^c = (1/Z) sum_ij dy^c/dA_ij^k
        L^c   = ReLU(sum_k w_k^c A^k)
    """

    name = "gradcam"
    weight_rules = ("gradcam",)


@register
class GradCAMPlusPlus(ChannelWeightCAM):
    """Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", WACV 2018, arXiv:1710.11063), with the paper's exponential score
    Y^c = exp(y^c), whose higher derivatives are exact powers of g (eq. 19)::

        alpha_ij^kc = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3)      (alpha = 0 where g = 0)
        w_k^c       = sum_ij alpha_ij^kc ReLU(g_ij^k)
        L^c         = ReLU(sum_k w_k^c A^k)

    The common factor exp(y^c) of the weights is dropped: it scales the map, which min-max removes.
    The weights are evaluated as w_k^c = sum_ij ReLU(g_ij) / (2 + S_k g_ij), S_k = sum_ab A_ab^k:
    the same number (g^2 cancels wherever ReLU(g) > 0) in three passes instead of six.
    """

    name = "gradcam++"
    weight_rules = ("gradcam++",)

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """``reference.channel_weights``' Grad-CAM++ rule with its vanishing-denominator guard always
        on (a graph cannot branch on values; the guard changes no number where it is not needed)."""
        relu_g = gradients.clamp_min(0)
        sum_a = activations.sum(dim=(-2, -1)).unsqueeze(1)[..., None, None]  # [N,1,K,1,1]
        denom = relu_g * sum_a + 2.0
        weights = (relu_g / torch.where(denom == 0, torch.inf, denom)).sum(dim=(-2, -1))
        return reference.weighted_sum_relu(activations, weights)


@register
class XGradCAM(ChannelWeightCAM):
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020, arXiv:2008.02312)::

        w_k^c = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k        (w = 0 where sum_ab A_ab^k = 0)
        L^c   = ReLU(sum_k w_k^c A^k)
    """

    name = "xgradcam"
    weight_rules = ("xgradcam",)


@register
class SmoothGradCAMPlusPlus(CamMethod):
    """Smooth Grad-CAM++ (Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models", IntelliSys 2019,
    arXiv:1908.01224). Grad-CAM++ whose derivative terms are averaged over n noisy copies
    x_s = x + N(0, sigma^2), sigma = ``smooth_sigma`` * (max(x) - min(x)) per image::

        D1 = (1/n) sum_s g_s,   D2 = (1/n) sum_s g_s^2,   D3 = (1/n) sum_s g_s^3
        alpha_ij^k = D2_ij / (2 D2_ij + sum_ab A_ab^k D3_ij)      (alpha = 0 where D2 = 0)
        w_k^c      = sum_ij alpha_ij^k ReLU(D1_ij^k)
        L^c        = ReLU(sum_k w_k^c A^k)

    g_s^k = dy^c/dA^k at the s-th noisy copy, for the class c resolved on the clean image; A is
    the clean image's activation. The noisy copies run in the same explain-graph call as the clean
    images (in chunks of ``runtime.max_graph_batch``); a negative target (-k: k-th best class) is
    first resolved by a forward run of the clean images, so every copy explains the same class.
    The noise is drawn from a generator seeded with ``smooth_seed``: a request is reproducible.
    """

    name = "smoothgradcam++"
    not_in_graph = "it runs the explain graph again on noisy copies of every image"
    requires = frozenset({"forward"})  # resolves negative targets on the clean images first
    cost = (
        "n = smooth_n noisy copies of each image in the explain run (N*(1+n) images), "
        "plus a forward run of the clean images when a target is negative"
    )

    def noisy_copies(self, options: ExplainOptions) -> int:
        return options.smooth_n

    def compute(self, ctx: MethodContext) -> MethodMaps:
        noisy = ctx.noisy_gradients
        if noisy is None:
            raise RuntimeError("smoothgradcam++ ran without noisy gradients; the planner must add them")
        d1 = noisy.mean(dim=0)
        d2 = (noisy * noisy).mean(dim=0)
        d3 = (noisy * noisy * noisy).mean(dim=0)
        sum_a = ctx.outputs.activations.sum(dim=(-2, -1), keepdim=True).unsqueeze(1)  # [N,1,K,1,1]
        denominator = 2.0 * d2 + sum_a * d3
        alpha = torch.where(denominator != 0, d2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
        weights = (alpha * d1.clamp_min(0)).sum(dim=(-2, -1))
        return MethodMaps(self.weighted_maps(ctx, weights))


@register
class LayerCAM(CamMethod):
    """Layer-CAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021)::

        L^c = ReLU(sum_k ReLU(g^k) * A^k)          (elementwise: one weight per pixel)

    Several target layers are fused as the paper's Eq. 9 (and torchcam's ``fuse_cams``): each
    layer's map min-max normalised and scaled by tanh(2 m), upsampled to the finest layer's
    resolution, then the element-wise maximum (:meth:`fuse`).
    """

    name = "layercam"
    layer_fusion = "method"
    not_in_graph = ""

    def compute(self, ctx: MethodContext) -> MethodMaps:
        layer_maps = [elementwise_maps(ctx, acts, grads, relu_gradients=True) for acts, grads in ctx.layers]
        return MethodMaps(self.fuse(layer_maps, eps=ctx.options.eps, backend=ctx.backend))

    @staticmethod
    def fuse(layer_maps: Sequence[torch.Tensor], eps: float, backend: str = "torch") -> torch.Tensor:
        """One map: returned as is (so raw output stays raw). Several [N,T,h_l,w_l]: each min-max
        normalised, scaled by tanh(2 m) (shallow layers' weak maps are lifted), upsampled to the
        largest h_l x w_l, then the element-wise maximum."""
        if len(layer_maps) == 1:
            return layer_maps[0]
        size = max(((int(m.shape[-2]), int(m.shape[-1])) for m in layer_maps), key=lambda hw: hw[0] * hw[1])
        scaled = [
            torch.tanh(2.0 * kernels.upsample_normalize(m, None, True, eps, backend=backend))
            for m in layer_maps
        ]
        upsampled = [kernels.upsample_normalize(m, size, False, eps, backend=backend) for m in scaled]
        return torch.stack(upsampled).amax(dim=0)

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        return reference.elementwise_sum_relu(activations, gradients, relu_gradients=True)  # one layer


@register
class HiResCAM(CamMethod):
    """HiRes-CAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891)::

        L^c = ReLU(sum_k g^k * A^k)                (elementwise, gradients not averaged)
    """

    name = "hirescam"
    layer_fusion = "mean"
    not_in_graph = ""

    def compute(self, ctx: MethodContext) -> MethodMaps:
        outputs = ctx.outputs
        return MethodMaps(elementwise_maps(ctx, outputs.activations, outputs.gradients, relu_gradients=False))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        return reference.elementwise_sum_relu(activations, gradients, relu_gradients=False)
