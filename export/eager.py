"""``TorchGraphRunner``: the GraphRunner protocol on eager PyTorch.

It calls the very functions that are traced to ONNX (``SplitModel``), so it is both the eager twin
the exported graphs are checked against and a way to explain a model in-process without exporting.
The given model is never modified (SplitModel keeps its own frozen copy).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from camserve.errors import UnsupportedError
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
        # SplitModel.explain(images, targets, target_kinds[, target_data]) once it takes target kinds
        self._kinds = len(inspect.signature(self.split.explain).parameters) > 2

    def explain(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> ExplainOutputs:
        """See ``GraphRunner.explain``; a plain [N,T] int tensor stands for class ids of the output's
        default kind."""
        table = self._table(targets)
        with torch.no_grad():
            out = self.split.explain(images, *self._target_args(table))
        if self._kinds:  # named as the explain graph's outputs (SplitModel.explain_outputs)
            named = dict(zip(self.split.explain_outputs, out, strict=True))
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
        extra = out[4] if len(out) > 4 else None
        return ExplainOutputs(out[0], out[1], out[2], out[3], extra, out[0].gather(1, out[3]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.split.forward(images)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.split.head(activations, extra_tokens)

    def guided(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> torch.Tensor:
        return self.split.guided(images, *self._target_args(self._table(targets)))

    def _table(self, targets: TargetTable | torch.Tensor) -> TargetTable:
        if isinstance(targets, TargetTable):
            return targets
        return TargetTable.of_ids(targets, getattr(self.split, "target_spec", None))

    def _target_args(self, table: TargetTable) -> tuple[torch.Tensor, ...]:
        if self._kinds:
            return (table.ids, table.kinds) if table.data is None else (table.ids, table.kinds, table.data)
        if not table.all_default:
            raise UnsupportedError("this SplitModel explains class logits only (no target kinds)")
        return (table.ids,)

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.split.fullgradient(images, targets).detach()
