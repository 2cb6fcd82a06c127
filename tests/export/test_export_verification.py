"""The in-export verification: float32 ReLU flips pass, a wrong graph is refused.

A flip is planted the way it happens (one ReLU unit near zero on in one runtime, off in the other:
its whole backward path added to every element of a gradient map); wrong graphs are planted in a
real exported ONNX file (a conv weight with its sign flipped, a weight off by 5 %).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from camserve.errors import ExportError
from camserve.export.graphs import SplitModel
from camserve.export.verification import GRADIENT_TOLERANCE, disagreement, verify_graph
from tests.export.exporting import export_test_model
from tests.export.nets import TinyGapNet


def _gradients(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 2, 3, 8, 8)).astype(np.float32)


def test_a_flipped_relu_unit_is_not_a_wrong_graph() -> None:
    want = _gradients(0)
    got = want.copy()
    # one image/target gains a flipped unit's path: a small rank-1 term over the whole map
    path = np.random.default_rng(1).normal(size=want.shape[2:]).astype(np.float32)
    got[1, 0] += 3e-3 * np.abs(want).max() * path / np.abs(path).max()
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()  # what the old check refused
    assert disagreement("input_gradients", got, want) is None
    assert disagreement("gradients", got, want) is None


def test_wrong_gradients_values_and_ids_are_refused() -> None:
    want = _gradients(0)
    assert "relative L2 error 2.00e+00 for image 0, target 0" in disagreement("gradients", -want, want)
    shifted = np.roll(want, 1, axis=-1)  # an off-by-one window
    assert disagreement("input_gradients", shifted, want) is not None
    one_map = want.copy()
    one_map[2, 1] *= 1 + 3 * GRADIENT_TOLERANCE  # one map scaled by 3 %: named
    assert "image 2, target 1" in disagreement("gradients", one_map, want)
    logits = want[:, 0, 0, 0]
    assert disagreement("logits", logits * (1 + 2e-3), logits) is not None  # values: no flip excuse
    ids = np.array([[1, 2], [3, 4]])
    assert disagreement("target_ids", ids[::-1], ids) == "different values"
    assert disagreement("gradients", want[:2], want).startswith("shape")


def _planted(model_dir, scale_channel: float) -> str:
    """Copy the guided graph with output channel 0 of its first conv weight scaled by ``scale_channel``."""
    graph = onnx.load(str(model_dir.graph_path("guided")))
    first = next(init for init in graph.graph.initializer if len(init.dims) == 4)
    weight = numpy_helper.to_array(first).copy()
    weight[0] *= scale_channel
    first.CopyFrom(numpy_helper.from_array(weight, first.name))
    path = model_dir.path / f"planted_{scale_channel}.onnx"
    onnx.save(graph, str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny_guided(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyGapNet().eval()
    out = tmp_path_factory.mktemp("verification") / "tiny"
    return model, export_test_model(model, "features", (3, 16, 16), out, graphs=("explain", "guided"))


@pytest.mark.parametrize("scale_channel", [-1.0, 1.05])
def test_a_planted_wrong_weight_is_refused(tiny_guided, scale_channel: float) -> None:
    model, model_dir = tiny_guided
    split = SplitModel(model, "features", (3, 16, 16))
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[-1, 0], [1, -2]])
    kinds = torch.tensor([[0, 1], [2, 0]])  # logit, probability, sigmoid
    inputs, names = (images, targets, kinds), ["images", "targets", "target_kinds"]
    verify_graph("guided", model_dir.graph_path("guided"), split.guided, inputs, names)  # the real one passes
    with pytest.raises(ExportError, match="guided graph disagrees with PyTorch on output 'input_gradients'"):
        verify_graph("guided", _planted(model_dir, scale_channel), split.guided, inputs, names)
