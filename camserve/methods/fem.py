"""FEM, the Feature Explanation Method: channels weighted by how much of them is unusually strong.
Gradient-free and class-agnostic; it reads the activations of the shared explain run."""

from __future__ import annotations

import torch

from camserve.kernels import reference
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, register


@register
class FEM(CamMethod):
    """FEM (Fuad et al., "Features Understanding in 3D CNNs for Actions Recognition in Video",
    IPTA 2020; pytorch-grad-cam's ``FEM``): a k-sigma rule per channel::

        mu_k, sigma_k = mean and (population) standard deviation of A^k over its h x w pixels
        w_k = (1/Z) sum_ij 1[A_ij^k > mu_k + k_sigma sigma_k]        k_sigma = 2
        L   = ReLU(sum_k w_k A^k)

    Class-agnostic: every target of an image gets the same map.
    """

    name = "fem"
    layer_fusion = "mean"
    eigen_smoothable = False  # pytorch-grad-cam's FEM ignores it
    k_sigma = 2.0
    not_in_graph = ""

    def weights(self, activations: torch.Tensor, num_targets: int) -> torch.Tensor:
        """w [N,T,K], the same for every target."""
        mean = activations.mean(dim=(-2, -1), keepdim=True)
        std = (activations - mean).square().mean(dim=(-2, -1), keepdim=True).sqrt()  # population std
        weights = (activations > mean + self.k_sigma * std).to(activations.dtype).mean(dim=(-2, -1))  # [N,K]
        return weights.unsqueeze(1).expand(-1, num_targets, -1).contiguous()

    def compute(self, ctx: MethodContext) -> MethodMaps:
        weights = self.weights(ctx.outputs.activations, ctx.outputs.target_ids.shape[1])
        return MethodMaps(self.weighted_maps(ctx, weights))

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        return reference.weighted_sum_relu(activations, self.weights(activations, target_ids.shape[1]))
