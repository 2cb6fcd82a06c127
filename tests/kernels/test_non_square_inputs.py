"""A non-square input's maps (a 40x64 input, 20x32 maps) through the Triton kernels, under the
interpreter, equal the torch reference: the weighting on the 20x32 grid, then the resize to 40x64."""

from __future__ import annotations

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, cam_inputs


def test_non_square_maps_match_reference() -> None:
    a, g = cam_inputs(1, 2, 6, 20, 32, activations="mixed")
    maps = kernels.gradient_weighted_cam(a, g, "gradcam", backend="triton")
    expected = reference.gradient_weighted_cam(a, g, "gradcam")
    assert tuple(maps.shape) == (1, 2, 20, 32)
    assert_close(maps, expected)
    out = kernels.upsample_normalize(maps, (40, 64), True, backend="triton")
    want = reference.upsample_normalize(expected, (40, 64), True)
    assert tuple(out.shape) == (1, 2, 40, 64)
    assert float(want.amax()) == 1.0  # min-max ran on the non-square plane
    assert_close(out, want)
