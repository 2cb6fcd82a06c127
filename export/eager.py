"""``TorchGraphRunner``: the GraphRunner protocol on eager PyTorch.

It calls the very functions that are traced to ONNX (``SplitModel``), so it is both the eager twin
the exported graphs are checked against and a way to explain a model in-process without exporting.
The given model is never modified (SplitModel keeps its own frozen copy).
"""

from __future__ import annotations

import torch
from torch import nn

from camserve.export.graphs import SplitModel
from camserve.outputs import ExplainOutputs


class TorchGraphRunner:
    def __init__(
        self,
        model: nn.Module,
        layer: str,
        input_size: tuple[int, int, int] = (3, 224, 224),
        layout: str | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        self.split = SplitModel(model, layer, input_size, layout=layout, prefix_tokens=prefix_tokens)

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> ExplainOutputs:
        with torch.no_grad():
            out = self.split.explain(images, targets)
        extra = out[5] if len(out) > 5 else None  # out[4]: target_scores
        return ExplainOutputs(out[0], out[1], out[2], out[3], extra)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.split.forward(images)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.split.head(activations, extra_tokens)

    def guided(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.split.guided(images, targets)
