"""The one autograd reference of the tests: plain forward hooks + torch.autograd.grad on the model
itself, one target at a time, and the papers' post-processing written out.

It shares no code with camserve (no explain graph, no repetition trick, torch.topk for negative
targets, its own upsampling and min-max), so a test comparing against it checks the idea as well as
the implementation. Used by the export, method and default-model tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ToNkhw = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
FromNkhw = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _as_nkhw(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    return output, None


def _from_nkhw(activations: torch.Tensor, _extra: torch.Tensor | None) -> torch.Tensor:
    return activations


def resolve_by_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class ids [N,T]: a target c >= 0 is class c, -k is each image's k-th best class."""
    top = torch.topk(logits, logits.shape[1], dim=1).indices
    return torch.where(targets >= 0, targets, torch.gather(top, 1, (-targets - 1).clamp(min=0)))


def autograd_explain(
    model: nn.Module,
    layer: str | nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    to_nkhw: ToNkhw = _as_nkhw,
    from_nkhw: FromNkhw = _from_nkhw,
    activations: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [N,C], A [N,K,h,w], dY/dA [N,T,K,h,w] and the class ids [N,T] of ``targets`` [N,T].

    ``layer`` is a module of ``model`` or its dotted name; ``to_nkhw`` / ``from_nkhw`` reshape a
    token layer's output to [N,K,h,w] and back (with the tokens they drop). With ``activations``
    given, the gradients are taken at those activations (the layer's output is replaced by them):
    the way to compare gradients at a graph's own activations.
    """
    module = model.get_submodule(layer) if isinstance(layer, str) else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        acts, extra = to_nkhw(out.detach())
        leaf = (acts if activations is None else activations).clone().requires_grad_(True)
        store["acts"], store["leaf"] = acts.clone(), leaf
        return from_nkhw(leaf, extra).clone()  # a copy: an in-place op after the layer keeps the leaf

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    ids = resolve_by_rank(logits, targets)
    grads = torch.zeros(targets.shape[0], targets.shape[1], *store["leaf"].shape[1:])
    for t in range(targets.shape[1]):
        selected = logits.gather(1, ids[:, t : t + 1]).sum()  # images are independent: sum = per-image grads
        (g,) = torch.autograd.grad(selected, store["leaf"], retain_graph=True)
        grads[:, t] = g
    return logits.detach(), store["acts"], grads, ids


def layer_gradients(
    model: nn.Module, layer: str | nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``autograd_explain`` for one class per image (classes [N]): logits, A and dY/dA [N,K,h,w]."""
    logits, acts, grads, _ = autograd_explain(model, layer, images, classes.unsqueeze(1))
    return logits, acts, grads[:, 0]


class _GuidedRelu(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _ReluIsGuided(torch.overrides.TorchFunctionMode):
    """Every ReLU call (nn.ReLU, F.relu, torch.relu, in-place or not) goes through ``_GuidedRelu``."""

    RELUS = {torch.nn.functional.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self.RELUS:
            return _GuidedRelu.apply(args[0])
        return func(*args, **kwargs)


def autograd_guided(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Guided-backprop input gradients [N,T,C,H,W] of ``targets`` [N,T], one backward pass per
    target (every ReLU call replaced, as pytorch-grad-cam does with modules, instead of camserve's
    aten-level rule)."""
    x = images.clone().requires_grad_(True)
    with torch.enable_grad(), _ReluIsGuided():
        logits = model(x)
    ids = resolve_by_rank(logits, targets)
    grads = torch.zeros(targets.shape[0], targets.shape[1], *images.shape[1:])
    for t in range(targets.shape[1]):
        (g,) = torch.autograd.grad(logits.gather(1, ids[:, t : t + 1]).sum(), x, retain_graph=True)
        grads[:, t] = g
    return grads


def minmax(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max over the last two dims; constant maps -> 0."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > eps, (maps - lo) / span.clamp_min(eps), torch.zeros_like(maps))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[..., h, w] -> [..., H, W], bilinear with half-pixel centres."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def gradient_cam_maps(activations: torch.Tensor, grads: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient methods' raw maps [N,h,w] from A and g [N,K,h,w], written from the papers."""
    relu = torch.relu
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    out = {}
    w = grads.mean(dim=(2, 3), keepdim=True)
    out["gradcam"] = relu((w * activations).sum(dim=1))
    alpha = grads**2 / (2 * grads**2 + sum_a * grads**3)
    alpha = torch.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0)  # 0/0 where g = 0
    w = (alpha * relu(grads)).sum(dim=(2, 3), keepdim=True)
    out["gradcam++"] = relu((w * activations).sum(dim=1))
    w = (activations / sum_a * grads).nan_to_num(0.0).sum(dim=(2, 3), keepdim=True)
    out["xgradcam"] = relu((w * activations).sum(dim=1))
    out["layercam"] = relu((relu(grads) * activations).sum(dim=1))
    out["hirescam"] = relu((grads * activations).sum(dim=1))
    return out
