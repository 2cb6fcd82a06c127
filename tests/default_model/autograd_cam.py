"""Grad-CAM of a torch model by hand: a forward hook on the target layer and torch.autograd.grad."""

from __future__ import annotations

import torch

from camserve.default_model.net import TARGET_LAYER, normalize
from camserve.kernels.reference import channel_weights, upsample_normalize, weighted_sum_relu


def activations_and_gradients(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A [N,K,h,w] of the target layer and dY_label/dA [N,1,K,h,w], via a forward hook and autograd."""
    captured: list[torch.Tensor] = []
    hook = model.get_submodule(TARGET_LAYER).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(normalize(images))
    finally:
        hook.remove()
    (activations,) = captured
    (gradients,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), activations)
    return activations.detach(), gradients[:, None]


def gradcam(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    activations, gradients = activations_and_gradients(model, images, labels)
    maps = weighted_sum_relu(activations, channel_weights(activations, gradients, "gradcam"))
    return upsample_normalize(maps, tuple(images.shape[-2:]))[:, 0]  # [N,H,W]
