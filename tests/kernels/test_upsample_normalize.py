"""kernels.upsample_normalize (Triton: bilinear resize + min-max + uint8 in one kernel) vs the reference."""

from __future__ import annotations

import pytest
import torch

from camserve import kernels
from camserve.kernels import reference
from tests.kernels.kernel_cases import assert_close, assert_uint8_close, random_maps

# (h, w) -> size: unchanged, 7x7 -> 224x224 (integer factor), 14x14 -> 23x17 (non-integer, non-square),
# 5x3 -> 37x41, 7x7 -> 7x20 (one axis only), 14x14 -> 5x3 (downsampling).
RESIZES = [
    ((7, 7), None),
    ((7, 7), (224, 224)),
    ((14, 14), (23, 17)),
    ((5, 3), (37, 41)),
    ((7, 7), (7, 20)),
    ((14, 14), (5, 3)),
]


def _ids(case: tuple[tuple[int, int], tuple[int, int] | None]) -> str:
    (h, w), size = case
    return f"{h}x{w}-to-{'same' if size is None else f'{size[0]}x{size[1]}'}"


@pytest.mark.parametrize("resize", RESIZES, ids=_ids)
@pytest.mark.parametrize("kind", ["relu", "negative"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_float_maps_match_reference(resize, kind: str, normalize: bool) -> None:
    (h, w), size = resize
    maps = random_maps(2, 2, h, w, kind)
    out = kernels.upsample_normalize(maps, size, normalize, backend="triton")
    assert_close(out, reference.upsample_normalize(maps, size, normalize))


@pytest.mark.parametrize("resize", RESIZES, ids=_ids)
def test_uint8_maps_match_reference(resize) -> None:
    (h, w), size = resize
    maps = random_maps(2, 2, h, w, "relu", seed=1)
    out = kernels.upsample_normalize(maps, size, True, to_uint8=True, backend="triton")
    expected = reference.upsample_normalize(maps, size, True, to_uint8=True)
    assert_uint8_close(out, expected, reference.upsample_normalize(maps, size, True))


@pytest.mark.parametrize("size", [None, (5, 6), (23, 17)], ids=str)
def test_one_pixel_maps(size) -> None:
    maps = random_maps(2, 3, 1, 1, "negative")
    out = kernels.upsample_normalize(maps, size, normalize=False, backend="triton")
    assert_close(out, reference.upsample_normalize(maps, size, normalize=False))
    # A one-pixel map is constant: no location, all zeros once normalised.
    normalised = kernels.upsample_normalize(maps, size, backend="triton")
    assert torch.count_nonzero(normalised) == 0


@pytest.mark.parametrize("size", [None, (224, 224), (23, 17)], ids=str)
def test_all_zero_maps(size) -> None:
    # What all-zero gradients give: min = max = 0.
    maps = torch.zeros(1, 2, 7, 7)
    for to_uint8 in (False, True):
        out = kernels.upsample_normalize(maps, size, True, to_uint8=to_uint8, backend="triton")
        assert_close(out, reference.upsample_normalize(maps, size, True, to_uint8=to_uint8), atol=0)


@pytest.mark.parametrize("value", [5.7, -3.25, 1e-3])
def test_constant_maps_normalise_to_zeros(value: float) -> None:
    maps = torch.full((1, 2, 7, 7), value)
    # Sizes where the reference's weight-sum interpolation keeps the constant exactly: compare.
    for size in (None, (224, 224)):
        out = kernels.upsample_normalize(maps, size, backend="triton")
        assert_close(out, reference.upsample_normalize(maps, size), atol=0)
    # At 23x17 float32 rounding in F.interpolate's weights ((1 - l) + l != 1) leaves an ulp of range
    # (above the default eps for |value| >= 1); the kernel's lerps keep the map exactly constant, so
    # the rule "range <= eps -> zeros" holds for every size.
    out = kernels.upsample_normalize(maps, (23, 17), backend="triton")
    assert torch.count_nonzero(out) == 0
    raw = kernels.upsample_normalize(maps, (23, 17), normalize=False, backend="triton")
    assert torch.equal(raw, torch.full((1, 2, 23, 17), value))


@pytest.mark.parametrize("eps", [0.0, 0.4, 0.6])
def test_eps_rule(eps: float) -> None:
    # Range 0.5: eps 0.6 zeroes the map, eps 0.4 and 0 normalise it.
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 2] = 0.5
    for size in (None, (9, 9)):
        out = kernels.upsample_normalize(maps, size, eps=eps, backend="triton")
        expected = reference.upsample_normalize(maps, size, eps=eps)
        assert_close(out, expected)
        assert (torch.count_nonzero(expected) == 0) == (eps > 0.5)


def test_non_contiguous_maps() -> None:
    maps = random_maps(2, 3, 7, 5, "relu").transpose(-1, -2)[:, ::2]
    out = kernels.upsample_normalize(maps, (30, 20), backend="triton")
    assert_close(out, reference.upsample_normalize(maps, (30, 20)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps(dtype: torch.dtype) -> None:
    maps = random_maps(1, 2, 7, 7, "relu").to(dtype)
    out = kernels.upsample_normalize(maps, (40, 40), backend="triton")
    expected = reference.upsample_normalize(maps.float(), (40, 40))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), expected, atol=1e-2)
