"""One way for the export tests to export a tiny test model (identity normalisation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from camserve.export import export_model
from camserve.modeldir import ModelDirectory


def export_test_model(
    model: torch.nn.Module,
    layer: str,
    input_size: Sequence[int],
    out: Path,
    graphs: Sequence[str] = ("explain",),
) -> ModelDirectory:
    return export_model(
        model,
        layer,
        input_size,
        out,
        name=out.name,
        architecture="test",
        mean=[0.0] * int(input_size[0]),
        std=[1.0] * int(input_size[0]),
        graphs=graphs,
    )
