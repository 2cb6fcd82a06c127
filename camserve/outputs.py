"""What one run of an explain graph returns, as tensors (CPU or CUDA), and the runner protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from camserve.methods.target_kinds import TargetTable


@dataclass
class ExplainOutputs:
    """Outputs of the explain graph for N images and T targets per image.

    logits        [N, C]        float32   class scores (``target_kinds.class_scores``; the logits
                                          of a classifier)
    activations   [N, K, h, w]  float32   target-layer output A (token layers already reshaped)
    gradients     [N, T, K, h, w] float32 ds/dA for the explained scalar s of target [n, t]
                                          (``target_kinds.target_scores``: a logit, a probability,
                                          a region's sum...)
    target_ids    [N, T]        int64     resolved classes (negative targets -k -> k-th best); the
                                          image index for ``*_image`` targets
    extra_tokens  [N, E, K] or None       tokens dropped by the reshape (ViT class token); the head
                                          graph needs them back to re-run the head
    target_scores [N, T] float32 or None  the scalars s themselves; runners always give them (for
                                          graphs exported before target kinds: the logits of the
                                          target ids), hand-made outputs may leave them out
    layers        [(A_l [N,K_l,h_l,w_l], g_l [N,T,K_l,h_l,w_l])]  the other target layers of a
                                          model exported with several (explain outputs
                                          ``activations_l`` / ``gradients_l``); [] with one
    """

    logits: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    target_ids: torch.Tensor
    extra_tokens: torch.Tensor | None = None
    target_scores: torch.Tensor | None = None
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def rows(self, items: slice) -> ExplainOutputs:
        """The outputs of images ``items``."""
        return ExplainOutputs(
            logits=self.logits[items],
            activations=self.activations[items],
            gradients=self.gradients[items],
            target_ids=self.target_ids[items],
            extra_tokens=None if self.extra_tokens is None else self.extra_tokens[items],
            target_scores=None if self.target_scores is None else self.target_scores[items],
            layers=[(a[items], g[items]) for a, g in self.layers],
        )


class GraphRunner(Protocol):
    """Runs a model's graphs. Implemented by ONNX Runtime (``camserve.runtime.OnnxGraphRunner``) and,
    as the eager twin, by PyTorch autograd (``camserve.export.eager.TorchGraphRunner``)."""

    def explain(self, images: torch.Tensor, targets: TargetTable) -> ExplainOutputs:
        """images [N,C,H,W] float32 (normalised); targets: the [N,T] table of ids, kinds and data
        (``camserve.methods.target_kinds.TargetTable``)."""
        ...

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores [N,C] only (Score-CAM's masked images, evaluation's perturbed images)."""
        ...

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores [M,C] from activations [M,K,h,w]: only the layers after the target layer run."""
        ...

    def guided(self, images: torch.Tensor, targets: TargetTable) -> torch.Tensor:
        """Guided-backprop input gradients [N,T,C,H,W] of the targets' scalars (as explain's)."""
        ...

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """FullGrad maps [N,T,H,W] (not normalised) of the class logits ``targets`` [N,T] int64
        (class ids or -k ranks): the fullgradient graph (``camserve.export.fullgrad``)."""
        ...
