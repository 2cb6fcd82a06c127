"""kernels.gradient_weighted_cam (Triton: weights and combine fused) vs the reference chain."""

from __future__ import annotations

import pytest
import torch

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, cam_inputs

METHODS = ("gradcam", "gradcam++", "xgradcam")
# (N, T, K, h, w): 40x33 = 1320 pixels is over the fused kernel's one-tile plane (1024): it runs
# the weights kernel then the combine kernel.
SHAPES = [(2, 1, 37, 7, 7), (1, 5, 6, 14, 14), (3, 2, 4, 1, 1), (1, 2, 130, 5, 9), (1, 1, 3, 40, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activations", ["relu", "negative", "mixed"])
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference(shape: tuple[int, ...], activations: str, method: str) -> None:
    a, g = cam_inputs(*shape, activations=activations)
    out = kernels.gradient_weighted_cam(a, g, method, backend="triton")
    expected = reference.gradient_weighted_cam(a, g, method)
    assert_close(out, expected)
    torch.testing.assert_close(
        expected, reference.weighted_sum_relu(a, reference.channel_weights(a, g, method))
    )


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_gradients(method: str) -> None:
    a, g = cam_inputs(2, 2, 9, 7, 7)
    out = kernels.gradient_weighted_cam(a, torch.zeros_like(g), method, backend="triton")
    assert_close(out, torch.zeros(2, 2, 7, 7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    a, g = cam_inputs(1, 2, 40, 7, 7, seed=5)
    a, g = a.to(dtype), g.to(dtype)
    out = kernels.gradient_weighted_cam(a, g, "gradcam", backend="triton")
    expected = reference.gradient_weighted_cam(a.float(), g.float(), "gradcam")
    assert out.dtype == dtype
    assert torch.allclose(out.float(), expected, rtol=1e-2, atol=1e-4)
