"""Guided backpropagation and guided Grad-CAM: evidence at input resolution from the guided graph.

The guided gradient has three colour channels; the [N,T,H,W] map is max_c |G_c| (the largest
magnitude over colour channels, the usual way to show a saliency map), and the signed
[N,T,3,H,W] array is kept as ``MethodMaps.rgb`` (``ExplainResult.rgb[method]``).
"""

from __future__ import annotations

import torch

from camserve import kernels
from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register
from camserve.methods.gradient import gradcam_maps


class _Guided(CamMethod):
    """What the guided methods share: the guided graph (run once per batch for all of them), and
    evidence at input resolution with colour channels."""

    requires = frozenset({"guided"})
    resolution = "input"
    colour = True
    not_in_graph = "it needs the guided-backprop graph's input gradients"

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        return {"guided": 1}


def guided_gradients(ctx: MethodContext) -> torch.Tensor:
    """Guided input gradients [N,T,3,H,W] of the targets' scalars; the guided graph runs once per
    batch (in chunks of ``runtime.max_graph_batch`` images) however many methods use it."""

    def make() -> torch.Tensor:
        targets = ctx.target_table
        gradients = run_in_chunks(
            lambda items: ctx.runner.guided(ctx.images[items], targets.rows(items)),
            ctx.images.shape[0],
            ctx.runtime.max_graph_batch,
        )
        return gradients.to(ctx.outputs.activations.device)

    return ctx.shared("guided_gradients", make)


@register
class GuidedBackprop(_Guided):
    """Guided backpropagation (Springenberg et al., "Striving for Simplicity: The All
    Convolutional Net", ICLR 2015 workshop, arXiv:1412.6806): the input gradient of y^c where each
    ReLU passes back only positive gradients at positive inputs::

        R^l = 1[f^l > 0] * 1[R^(l+1) > 0] * R^(l+1)
        map = max_c |G_c|                       G = R^0 [3,H,W], the guided input gradient

    Class-discriminative only weakly: use guided Grad-CAM for a class map.
    """

    name = "guidedbackprop"
    eigen_smoothable = False  # input gradients, not weighted activations
    aug_smoothable = False
    cost = "one guided-graph run (forward + guided backward)"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        gradients = guided_gradients(ctx)
        return MethodMaps(gradients.abs().amax(dim=2), rgb=gradients)


@register
class GuidedGradCAM(_Guided):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391): the guided gradient
    times the Grad-CAM map upsampled (bilinear) to the input size::

        G_gc = G * up(L_gradcam^c)
        map  = max_c |G_gc,c| = up(L_gradcam^c) * max_c |G_c|      (L_gradcam >= 0)

    The Grad-CAM map enters unnormalised: a positive scale of it does not change the normalised map.
    """

    name = "guidedgradcam"
    aug_smoothable = False  # eigen_smooth does apply: to its Grad-CAM factor
    weight_rules = ("gradcam",)
    cost = "one guided-graph run (shared with guidedbackprop)"

    def compute(self, ctx: MethodContext) -> MethodMaps:
        gradients = guided_gradients(ctx)
        cam = kernels.upsample_normalize(
            gradcam_maps(ctx), ctx.input_size, normalize=False, backend=ctx.backend
        )
        rgb = gradients * cam.unsqueeze(2)
        return MethodMaps(rgb.abs().amax(dim=2), rgb=rgb)
