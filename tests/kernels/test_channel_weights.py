"""kernels.channel_weights (Triton) vs kernels.reference.channel_weights."""

from __future__ import annotations

import pytest
import torch

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, cam_inputs

METHODS = ("gradcam", "gradcam++", "xgradcam")

# (N, T, K, h, w): K not a multiple of the channel block (64 for 7x7), h*w = 1, 7x7, 14x14,
# non-square, and a plane larger than one tile (40x33 with T=4: the kernel loops over pixel tiles).
SHAPES = [
    (2, 1, 37, 7, 7),
    (1, 3, 5, 14, 14),
    (2, 2, 3, 1, 1),
    (1, 1, 130, 5, 9),
    (1, 4, 3, 40, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activations", ["relu", "negative", "mixed"])
def test_all_methods_in_one_pass_match_reference(shape: tuple[int, ...], activations: str) -> None:
    a, g = cam_inputs(*shape, activations=activations)
    weights = kernels.channel_weights_for_methods(a, g, METHODS, backend="triton")
    assert list(weights) == list(METHODS)
    for method in METHODS:
        assert_close(weights[method], reference.channel_weights(a, g, method))


@pytest.mark.parametrize("method", METHODS)
def test_single_method_matches_reference(method: str) -> None:
    a, g = cam_inputs(2, 2, 19, 7, 7, seed=1)
    assert_close(
        kernels.channel_weights(a, g, method, backend="triton"), reference.channel_weights(a, g, method)
    )


def test_all_zero_gradients_give_zero_weights() -> None:
    a, g = cam_inputs(2, 2, 11, 7, 7)
    g = torch.zeros_like(g)
    weights = kernels.channel_weights_for_methods(a, g, METHODS, backend="triton")
    for method in METHODS:
        expected = reference.channel_weights(a, g, method)
        assert torch.count_nonzero(expected) == 0
        assert_close(weights[method], expected)


def test_all_zero_activation_channels() -> None:
    # sum_ij A = 0: XGrad-CAM's weight is 0 there; Grad-CAM++'s alpha becomes 1/2.
    a, g = cam_inputs(1, 2, 9, 7, 7, seed=2)
    a[:, ::2] = 0.0
    weights = kernels.channel_weights_for_methods(a, g, METHODS, backend="triton")
    for method in METHODS:
        assert_close(weights[method], reference.channel_weights(a, g, method))
    assert torch.count_nonzero(weights["xgradcam"][:, :, ::2]) == 0


def test_non_contiguous_views() -> None:
    # G[:, 1:3] keeps G's target stride; A as a channel slice keeps its batch stride.
    a_full, g_full = cam_inputs(2, 4, 12, 7, 5, seed=3)
    a, g = a_full[:, 2:9], g_full[:, 1:3, 2:9]
    weights = kernels.channel_weights_for_methods(a, g, METHODS, backend="triton")
    for method in METHODS:
        assert_close(weights[method], reference.channel_weights(a, g, method))


def test_channels_last_activations() -> None:
    a, g = cam_inputs(2, 1, 6, 7, 7, seed=4)
    a = a.to(memory_format=torch.channels_last)  # h*w plane not contiguous: the launcher copies it
    for method in METHODS:
        assert_close(
            kernels.channel_weights(a, g, method, backend="triton"), reference.channel_weights(a, g, method)
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype: torch.dtype) -> None:
    a, g = cam_inputs(1, 2, 40, 7, 7, seed=5)
    a, g = a.to(dtype), g.to(dtype)
    for method in METHODS:
        out = kernels.channel_weights(a, g, method, backend="triton")
        expected = reference.channel_weights(a.float(), g.float(), method)
        assert out.dtype == dtype
        # float32 sums, one rounding to the half type at the store
        assert torch.allclose(out.float(), expected, rtol=1e-2, atol=1e-4)


def test_gradcam_plus_plus_equals_the_papers_alpha_form() -> None:
    # The kernels evaluate ReLU(g) / (2 + S g); the paper writes alpha = g^2 / (2 g^2 + S g^3).
    # Same numbers, in float64, including negative activations and a term whose denominator is 0.
    a, g = cam_inputs(2, 2, 13, 5, 6, activations="mixed", seed=3)
    a[0, 0] = 0.0
    a[0, 0, 0, 0] = -2.0  # S = -2 for channel 0 of image 0 ...
    g[0, 0, 0] = -g[0, 0, 0].abs()
    g[0, 0, 0, 0, 0] = 1.0  # ... so 2 + S g = 0 at this pixel: its term is 0, as alpha's 0/0 is
    g[0, 0, 0, 1, 1] = 0.25  # and 0.25 / 1.5 here
    a64, g64 = a.double(), g.double()
    s = a64.sum(dim=(-2, -1)).unsqueeze(1)[..., None, None]
    g2, g3 = g64**2, g64**3
    denom = 2 * g2 + s * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
    paper = (alpha * g64.clamp_min(0)).sum(dim=(-2, -1)).float()
    assert paper[0, 0, 0].item() == pytest.approx(0.25 / 1.5)
    assert_close(reference.channel_weights(a, g, "gradcam++"), paper)
    assert_close(kernels.channel_weights(a, g, "gradcam++", backend="triton"), paper)
