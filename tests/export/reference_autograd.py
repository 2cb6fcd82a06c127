"""An independent reference for the explain graph: plain hooks + torch.autograd.grad, one target at a time.

It shares no code with camserve.export (no repetition trick, torch.topk for negative targets), so it
checks the idea as well as the export.
"""

from __future__ import annotations

import torch
from torch import nn


def autograd_explain(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: torch.Tensor,
    to_nkhw,
    from_nkhw,
    activations: torch.Tensor | None = None,
):
    """logits [N,C], A [N,K,h,w], dY/dA [N,T,K,h,w], ids [N,T].

    With ``activations`` given, the gradients are taken at those activations (the layer's output is
    replaced by them): the way to compare gradients at the graph's own activations.
    """
    module = dict(model.named_modules())[layer]
    store = {}

    def hook(_m, _i, out):
        acts, extra = to_nkhw(out.detach())
        leaf = (acts if activations is None else activations).clone().requires_grad_(True)
        store["acts"], store["leaf"] = acts.clone(), leaf
        return from_nkhw(leaf, extra).clone()

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    top = torch.topk(logits, logits.shape[1], dim=1).indices
    ids = torch.where(targets >= 0, targets, torch.gather(top, 1, (-targets - 1).clamp(min=0)))
    grads = torch.zeros(targets.shape[0], targets.shape[1], *store["leaf"].shape[1:])
    for t in range(targets.shape[1]):
        selected = logits.gather(1, ids[:, t : t + 1]).sum()  # images are independent: sum = per-image grads
        (g,) = torch.autograd.grad(selected, store["leaf"], retain_graph=True)
        grads[:, t] = g
    return logits.detach(), store["acts"], grads, ids
