"""kernels.weighted_sum_relu (Triton) vs kernels.reference.weighted_sum_relu."""

from __future__ import annotations

import pytest
import torch

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, cam_inputs

# (N, T, K, h, w): T = 5 spans two target blocks (4 + 1), K = 130 three channel blocks.
SHAPES = [(2, 1, 37, 7, 7), (1, 5, 6, 14, 14), (3, 2, 4, 1, 1), (1, 2, 130, 5, 9), (1, 1, 3, 40, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activations", ["relu", "negative", "mixed"])
def test_matches_reference(shape: tuple[int, ...], activations: str) -> None:
    n, t, k, h, w = shape
    a, _ = cam_inputs(n, 1, k, h, w, activations=activations)
    # both signs, so ReLU cuts; scaled by 1/sqrt(K) like real weights, keeping maps O(1) where
    # float32 summation-order differences stay well below 1e-5
    weights = torch.randn(n, t, k, generator=torch.Generator().manual_seed(7)) / k**0.5
    out = kernels.weighted_sum_relu(a, weights, backend="triton")
    expected = reference.weighted_sum_relu(a, weights)
    assert_close(out, expected)


def test_zero_weights_give_zero_maps() -> None:
    a, _ = cam_inputs(2, 1, 9, 7, 7)
    out = kernels.weighted_sum_relu(a, torch.zeros(2, 3, 9), backend="triton")
    assert_close(out, torch.zeros(2, 3, 7, 7))


def test_strided_weights() -> None:
    a, _ = cam_inputs(2, 1, 10, 7, 7, seed=1)
    weights = torch.randn(2, 10, 3).transpose(1, 2)  # [N,T,K] with channel stride 3
    assert_close(
        kernels.weighted_sum_relu(a, weights, backend="triton"), reference.weighted_sum_relu(a, weights)
    )


def test_relu_cuts_negative_sums() -> None:
    a, _ = cam_inputs(1, 1, 2, 7, 7, activations="mixed")
    weights = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # the two targets: +A^0 and -A^0
    out = kernels.weighted_sum_relu(a, weights, backend="triton")
    assert_close(out, torch.stack([a[:, 0].clamp_min(0), (-a[:, 0]).clamp_min(0)], dim=1))
    assert (out[0, 0] == 0).any() and (out[0, 1] == 0).any()
