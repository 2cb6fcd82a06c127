"""FullGrad: evidence at input resolution from the fullgrad graph (``camserve.export.fullgrad``)."""

from __future__ import annotations

from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


@register
class FullGrad(CamMethod):
    """FullGrad (Srinivas & Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019, arXiv:1905.00780), as pytorch-grad-cam's ``FullGrad``: the input
    gradient times the input plus the bias gradients of every biased layer (each ``Conv2d`` and
    ``BatchNorm2d`` with a bias; b_l a batch norm's eval-mode bias beta - mu gamma / sqrt(var + eps)),
    each channel min-max normalised (``s``) and resized to the input (``up``, bilinear)::

        L^c = sum_colour s(|dy_c/dx * x|) + sum_l up(sum_k s(|dy_c/dz_l^k * b_l^k|))

    z_l the layer's output. The target layer plays no part. Class logits only: the fullgradient graph
    takes class ids (or -k ranks), resolved by the explain run.
    """

    name = "fullgrad"
    requires = frozenset({"fullgradient"})
    resolution = "input"
    # pytorch-grad-cam's eigen_smooth projects the per-layer maps, which the graph sums
    eigen_smoothable = False
    logit_targets_only = True  # the fullgradient graph takes class ids only
    cost = "one fullgradient-graph run (forward + backward through the whole network)"
    not_in_graph = "it needs the fullgradient graph's bias gradients of every layer"

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        return {"fullgradient": 1}

    def compute(self, ctx: MethodContext) -> MethodMaps:
        target_ids = ctx.outputs.target_ids
        maps = run_in_chunks(
            lambda items: ctx.runner.fullgradient(ctx.images[items], target_ids[items]),
            ctx.images.shape[0],
            ctx.runtime.max_graph_batch,
        )
        return MethodMaps(maps.to(ctx.outputs.activations.device))
