"""``TorchGraphRunner``: the GraphRunner protocol on eager PyTorch.

It calls the very functions that are traced to ONNX (``SplitModel``), so it is both the eager twin
the exported graphs are checked against and a way to explain a model in-process without exporting.
The given model is never modified (SplitModel keeps its own frozen copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from camserve.export.graphs import SplitModel
from camserve.methods.target_kinds import TargetTable
from camserve.outputs import ExplainOutputs


class TorchGraphRunner:
    def __init__(
        self,
        model: nn.Module,
        layer: str | Sequence[str],
        input_size: tuple[int, int, int] = (3, 224, 224),
        layout: str | None = None,
        prefix_tokens: int | None = None,
        **split_options: Any,
    ) -> None:
        self.split = SplitModel(
            model, layer, input_size, layout=layout, prefix_tokens=prefix_tokens, **split_options
        )

    def explain(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> ExplainOutputs:
        """See ``GraphRunner.explain``; a plain [N,T] int tensor stands for class ids of the output's
        default kind."""
        table = self._table(targets)
        with torch.no_grad():
            out = self.split.explain(images, table.ids, table.kinds, table.data)
        named = dict(zip(self.split.explain_outputs, out, strict=True))  # as the explain graph's outputs
        layers = [
            (named[f"activations_{i}"], named[f"gradients_{i}"])
            for i in range(1, len(self.split.layer_names))
        ]
        return ExplainOutputs(
            named["logits"],
            named["activations"],
            named["gradients"],
            named["target_ids"],
            named.get("extra_tokens"),
            named["target_scores"],
            layers,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.split.forward(images)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.split.head(activations, extra_tokens)

    def guided(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> torch.Tensor:
        table = self._table(targets)
        return self.split.guided(images, table.ids, table.kinds, table.data)

    def _table(self, targets: TargetTable | torch.Tensor) -> TargetTable:
        if isinstance(targets, TargetTable):
            return targets
        return TargetTable.of_ids(targets, self.split.target_spec)

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.split.fullgradient(images, targets).detach()
