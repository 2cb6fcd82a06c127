"""Split launches (channel loop over several programs, upsample row bands) and device quantisation
match the reference; CUDA tensors are refused under the interpreter."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch

from camserve import kernels
from camserve.errors import UnsupportedError
from camserve.kernels import launch, reference
from tests.kernels.kernel_cases import assert_close, cam_inputs, random_maps


@pytest.fixture
def many_programs(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Plans as for a GPU with 32 SMs: small batches split into many programs."""
    module = importlib.import_module("camserve.kernels.triton_cam")
    monkeypatch.setattr(module, "INTERPRETER_PROGRAMS_WANTED", 64)
    module._programs_wanted.cache_clear()
    yield 64
    module._programs_wanted.cache_clear()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam"])
def test_split_channel_loop_matches_reference(many_programs: int, method: str) -> None:
    n, t, k, h, w = 1, 2, 200, 7, 7
    steps = launch.gradient_weighted_cam(n, t, k, h * w, method, many_programs)
    assert steps[0].grid[1] > 1 and steps[-1].kernel == "_sum_splits_relu_kernel"  # really split
    a, g = cam_inputs(n, t, k, h, w, activations="mixed", seed=3)
    assert_close(
        kernels.gradient_weighted_cam(a, g, method, backend="triton"),
        reference.gradient_weighted_cam(a, g, method),
    )


@pytest.mark.parametrize("relu", [False, True])
def test_split_combine_matches_reference(many_programs: int, relu: bool) -> None:
    a, g = cam_inputs(1, 1, 100, 6, 5, seed=4)
    assert launch.channel_sum_relu(1, 1, 100, 30, True, relu, many_programs)[0].grid[2] > 1
    assert_close(
        kernels.elementwise_sum_relu(a, g, relu, backend="triton"), reference.elementwise_sum_relu(a, g, relu)
    )
    weights = reference.channel_weights(a, g, "gradcam")
    assert_close(
        kernels.weighted_sum_relu(a, weights, backend="triton"), reference.weighted_sum_relu(a, weights)
    )


def test_upsample_row_bands_match_reference(many_programs: int) -> None:
    maps = random_maps(1, 1, 5, 6, "relu", seed=2)
    assert launch.upsample_normalize(1, 40, 40, True, True, True, many_programs).grid[1] > 1
    for to_uint8 in (False, True):
        out = kernels.upsample_normalize(maps, (40, 40), True, 1e-7, to_uint8, backend="triton")
        expected = reference.upsample_normalize(maps, (40, 40), True, 1e-7, to_uint8)
        if to_uint8:
            assert (out.int() - expected.int()).abs().max() <= 1 and (out != expected).float().mean() < 0.01
        else:
            assert_close(out, expected)


def test_quantize_uint8_matches_reference() -> None:
    maps = reference.upsample_normalize(random_maps(2, 3, 7, 7, "relu", seed=1), (9, 11))
    maps[0, 0, 0, :4] = torch.tensor([-0.5, 1.5, 0.5 / 255, 2.5 / 255])  # clipped, and ties to even
    expected = reference.quantize_uint8(maps)
    assert expected[0, 0, 0, :4].tolist() == [0, 255, 0, 2]
    out = kernels.quantize_uint8(maps, backend="triton")
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert torch.equal(kernels.quantize_uint8(maps, backend="torch"), expected)


def test_cuda_tensors_are_refused_under_the_interpreter() -> None:
    with pytest.raises(UnsupportedError, match="TRITON_INTERPRET=1 is set"):
        kernels._triton_kernels(torch.device("cuda", 1))
