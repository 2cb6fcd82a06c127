"""What one run of an explain graph returns, as tensors (CPU or CUDA), and the runner protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class ExplainOutputs:
    """Outputs of the explain graph for N images and T targets per image.

    logits       [N, C]        float32
    activations  [N, K, h, w]  float32   target-layer output A (token layers already reshaped)
    gradients    [N, T, K, h, w] float32 dY_c/dA for c = target_ids[n, t] (pre-softmax logit)
    target_ids   [N, T]        int64     resolved classes (negative targets -k -> k-th best)
    extra_tokens [N, E, K] or None       tokens dropped by the reshape (ViT class token); the head
                                         graph needs them back to re-run the head
    """

    logits: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    target_ids: torch.Tensor
    extra_tokens: torch.Tensor | None = None


class GraphRunner(Protocol):
    """Runs a model's graphs. Implemented by ONNX Runtime (``camserve.runtime.OnnxGraphRunner``) and,
    as the eager twin, by PyTorch autograd (``camserve.export.eager.TorchGraphRunner``)."""

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> ExplainOutputs:
        """images [N,3,H,W] float32 (normalised), targets [N,T] int64."""
        ...

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N,C] only (Score-CAM's masked images, evaluation's perturbed images)."""
        ...

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [M,C] from activations [M,K,h,w]: only the layers after the target layer run."""
        ...

    def guided(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Guided-backprop input gradients [N,T,3,H,W] of the resolved targets' logits."""
        ...

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """FullGrad maps [N,T,H,W] (not normalised) of the class logits ``targets`` [N,T] int64
        (class ids or -k ranks): the fullgradient graph (``camserve.export.fullgrad``)."""
        ...
