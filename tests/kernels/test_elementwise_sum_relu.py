"""kernels.elementwise_sum_relu (Triton; Layer-CAM and HiRes-CAM) vs the reference."""

from __future__ import annotations

import pytest
import torch

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, cam_inputs

SHAPES = [(2, 1, 37, 7, 7), (1, 5, 6, 14, 14), (3, 2, 4, 1, 1), (1, 2, 130, 5, 9), (1, 1, 3, 40, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activations", ["relu", "negative", "mixed"])
@pytest.mark.parametrize("relu_gradients", [True, False], ids=["layercam", "hirescam"])
def test_matches_reference(shape: tuple[int, ...], activations: str, relu_gradients: bool) -> None:
    a, g = cam_inputs(*shape, activations=activations)
    out = kernels.elementwise_sum_relu(a, g, relu_gradients, backend="triton")
    assert_close(out, reference.elementwise_sum_relu(a, g, relu_gradients))


@pytest.mark.parametrize("relu_gradients", [True, False], ids=["layercam", "hirescam"])
def test_all_zero_gradients(relu_gradients: bool) -> None:
    a, g = cam_inputs(2, 2, 9, 7, 7)
    out = kernels.elementwise_sum_relu(a, torch.zeros_like(g), relu_gradients, backend="triton")
    assert_close(out, torch.zeros(2, 2, 7, 7))


def test_gradient_view_of_some_targets() -> None:
    a, g = cam_inputs(2, 4, 8, 6, 7, seed=1)
    view = g[:, 1:3]
    for relu_gradients in (True, False):
        out = kernels.elementwise_sum_relu(a, view, relu_gradients, backend="triton")
        assert_close(out, reference.elementwise_sum_relu(a, view, relu_gradients))
