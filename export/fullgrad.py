"""FullGrad's maps (Srinivas & Fleuret, NeurIPS 2019), written once in plain PyTorch: the eager
runner calls :func:`fullgrad_maps` and ``SplitModel.fullgradient`` traces it into the ``fullgradient`` graph.

The map of target c sums, each term min-max normalised per channel and resized to the input::

    |dy_c/dx * x|                 per input channel
    |dy_c/dz_l * b_l|             per channel of every biased layer l (z_l its output, b_l its bias)

The biased layers are pytorch-grad-cam's: every ``nn.Conv2d`` and ``nn.BatchNorm2d`` (exact types)
with a bias; a batch norm's bias is the one it adds in eval mode, ``beta - mean * gamma / sqrt(var +
eps)``. Normalised as pytorch-grad-cam's ``scale_cam_image``: ``(m - min) / (1e-7 + max - min)``.
Resizing is linear, so each layer's normalised channels are summed first and resized once, by the
bilinear half-pixel matrices below (OpenCV's ``INTER_LINEAR``, torch's ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from camserve.errors import ExportError
from camserve.methods.targets import resolve_targets

_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def biased_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose bias gradients FullGrad reads, in the model's module order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in (nn.Conv2d, nn.BatchNorm2d) and getattr(module, "bias", None) is not None
    ]


def layer_bias(name: str, module: nn.Module) -> torch.Tensor:
    """[C]: what the layer adds per channel (a batch norm's in eval mode: its running statistics)."""
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            raise ExportError(
                f"fullgrad: batch norm {name!r} keeps no running statistics, so it has no fixed bias"
            )
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return (module.bias - module.running_mean * scale).detach()
    bias = module.bias
    assert isinstance(bias, torch.Tensor)  # biased_layers() picked it for having one
    return bias.detach()


def _channel_minmax(m: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] -> [B,h,w]: each channel min-max normalised, then summed over the channels."""
    low = m.amin(dim=(2, 3), keepdim=True)
    m = m - low
    return (m / (_EPS + m.amax(dim=(2, 3), keepdim=True))).sum(dim=1)


def _resize_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] bilinear interpolation along one axis with half-pixel centres, clamped at the edges."""
    scale = size_in / size_out
    rows = []
    for i in range(size_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        low = min(int(src), size_in - 1)
        high = min(low + 1, size_in - 1)
        frac = src - low
        row = [0.0] * size_in
        row[low] += 1.0 - frac
        row[high] += frac
        rows.append(row)
    # from Python numbers: tracing records one constant, not the ops that filled it
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,h,w] -> [B,H,W] bilinear (half-pixel centres, no antialiasing), as two matrix products."""
    h, w = int(maps.shape[-2]), int(maps.shape[-1])
    if (h, w) == size:
        return maps
    r_h = _resize_matrix(h, size[0], maps)
    r_w = _resize_matrix(w, size[1], maps)
    return torch.matmul(torch.matmul(r_h, maps), r_w.t())


def _repeat(x: torch.Tensor, times: int) -> torch.Tensor:
    return x.unsqueeze(1).expand(x.shape[0], times, *x.shape[1:]).reshape(-1, *x.shape[1:])


def fullgrad_maps(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """FullGrad maps [N,T,H,W] (not normalised as a whole) of the class logits ``targets`` [N,T]
    (class ids, or -k for the k-th best class), from one forward and one backward pass over the
    N·T copies of the images. ``forward`` runs ``model`` (its parameters frozen) to logits [N,C]."""
    n, t = targets.shape
    layers = biased_layers(model)
    biases = [layer_bias(name, module) for name, module in layers]
    outputs: list[tuple[int, torch.Tensor]] = []

    def hook_for(index: int) -> Callable[..., torch.Tensor]:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            outputs.append((index, out))
            return out.clone()  # an in-place op after the layer (ReLU) must not rewrite z's history

        return hook

    handles = [module.register_forward_hook(hook_for(i)) for i, (_, module) in enumerate(layers)]
    try:
        with torch.enable_grad():
            rep = _repeat(images, t).detach().requires_grad_(True)
            logits_rep = forward(rep)
            logits = logits_rep.reshape(n, t, -1)[:, 0].detach()
            ids = resolve_targets(targets, logits).reshape(-1, 1)
            selected = logits_rep.gather(1, ids).sum()  # each copy's own target: rows are independent
            grads = torch.autograd.grad(selected, [rep] + [z for _, z in outputs], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    size = (int(images.shape[-2]), int(images.shape[-1]))
    total = _channel_minmax((grads[0] * rep.detach()).abs())
    by_size: dict[tuple[int, int], torch.Tensor] = {}  # layer maps of one size are summed, then resized once
    for (index, z), grad in zip(outputs, grads[1:], strict=True):
        if grad is None:  # the layer does not reach the logits: its maps are 0
            continue
        bias = biases[index].to(grad.dtype).reshape(1, -1, 1, 1)
        key = (int(z.shape[-2]), int(z.shape[-1]))
        layer_map = _channel_minmax((grad * bias).abs())
        by_size[key] = by_size[key] + layer_map if key in by_size else layer_map
    for maps in by_size.values():
        total = total + _resize(maps, size)
    return total.reshape(n, t, *size)
