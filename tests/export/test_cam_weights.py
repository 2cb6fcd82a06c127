"""The CAM weights of a model directory: found numerically for GAP -> linear heads (W and b exactly),
absent for any other head, so that CAM is refused there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.export.exporting import export_test_model
from tests.export.nets import GapMlpHead, MaxPoolHead, TinyGapNet


def test_gap_linear_head_gives_the_classifier_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyGapNet().eval()
    model_dir = export_test_model(model, "features", (3, 8, 8), tmp_path / "m")
    cam = model_dir.manifest.cam_weights
    assert cam is not None
    saved = np.load(model_dir.path / cam.file)
    np.testing.assert_allclose(saved["weight"], model.fc.weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(saved["bias"], model.fc.bias.detach().numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("net", "why"),
    [(MaxPoolHead, "linear, but reads where each value sits"), (GapMlpHead, "position-blind, not affine")],
)
def test_other_heads_have_no_cam_weights(net, why, tmp_path) -> None:
    torch.manual_seed(0)
    model_dir = export_test_model(net().eval(), "body", (3, 4, 4), tmp_path / "m")
    assert model_dir.manifest.cam_weights is None, why
