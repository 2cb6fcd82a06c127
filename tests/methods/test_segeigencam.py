"""Seg-Eigen-CAM against pytorch-grad-cam's SegEigenCAM where the gradients' signs vary over the
map: behind a GAP -> linear head (the tiny model of test_methods_anchors) |g| ⊙ A and g ⊙ A have the
same principal projection (the signs flip whole columns), so this module's model has a conv head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")

from pytorch_grad_cam import SegEigenCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from camserve import Explainer  # noqa: E402
from camserve.export import export_model  # noqa: E402

INPUT_SIZE = (3, 16, 16)
TOLERANCE = 2e-3


def conv_head_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),  # "3": the target layer, 8 channels at 8x8
        nn.Conv2d(8, 6, 3, padding=1),  # the head mixes neighbours: gradients vary over the map
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


@pytest.fixture(scope="module")
def explainer(tmp_path_factory: pytest.TempPathFactory) -> Explainer:
    model_dir = export_model(
        conv_head_net(),
        "3",
        INPUT_SIZE,
        tmp_path_factory.mktemp("segeigen") / "convhead",
        name="convhead",
        architecture="module:tests.methods.test_segeigencam:conv_head_net",
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        class_names=["a", "b", "c", "d"],
        graphs=("explain",),
        verify=False,
    )
    return Explainer(model_dir)


def test_segeigencam_equals_pytorch_grad_cam_and_differs_from_eigengradcam(explainer: Explainer) -> None:
    images = torch.randn(4, *INPUT_SIZE, generator=torch.Generator().manual_seed(2))
    classes = [0, 1, 2, 3]
    result = explainer.explain(
        images, methods=["segeigencam", "eigengradcam"], targets=[[c] for c in classes]
    )
    ours = result.maps["segeigencam"][:, 0]
    model = conv_head_net()
    with SegEigenCAM(model, [model[3]]) as cam:
        theirs = cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(c) for c in classes])
    assert ours.shape == theirs.shape == (4, 16, 16)
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE
    # |g| is not g here: the maps differ from Eigen-Grad-CAM's
    assert float(np.abs(ours - result.maps["eigengradcam"][:, 0]).max()) > 0.1
