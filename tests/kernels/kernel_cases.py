"""Inputs and comparisons shared by the kernel tests (small shapes: the Triton interpreter is slow)."""

from __future__ import annotations

from typing import Literal

import torch

# The bound the brief sets for every float output: kernels vs reference, float32.
ATOL = 1e-5

Activations = Literal["relu", "negative", "mixed"]


def cam_inputs(
    n: int, t: int, k: int, h: int, w: int, activations: Activations = "relu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A [N,K,h,w] and G [N,T,K,h,w].

    relu: post-ReLU activations (>= 0, a third exactly 0), gradients N(0, 0.1^2).
    negative: all activations < 0. mixed: both signs, each channel's sum away from 0.
    With a negative channel sum s, Grad-CAM++'s alpha = 1/(2 + s*g) has a pole at g = -2/s and
    XGrad-CAM divides by s: there float32 rounding in a different summation order is amplified
    without bound, so for these two cases gradients are scaled to |s*g| <= 1 (alpha in [1/3, 1])
    and |s| >= h*w/2. The maths is then well conditioned and 1e-5 is a fair bound.
    """
    gen = torch.Generator().manual_seed(seed)
    if activations == "relu":
        a = torch.randn(n, k, h, w, generator=gen).clamp_min(0)
        g = 0.1 * torch.randn(n, t, k, h, w, generator=gen)
        return a, g
    if activations == "negative":
        a = -(torch.rand(n, k, h, w, generator=gen) + 0.5)
    else:
        noise = torch.randn(n, k, h, w, generator=gen)
        offset = (torch.rand(n, k, 1, 1, generator=gen) + 0.5) * torch.where(
            torch.rand(n, k, 1, 1, generator=gen) < 0.5, -1.0, 1.0
        )
        a = noise - noise.mean(dim=(-2, -1), keepdim=True) + offset
    channel_sum = a.sum(dim=(-2, -1)).abs().clamp_min(1.0)  # [N,K]
    u = 2 * torch.rand(n, t, k, h, w, generator=gen) - 1
    return a, u / channel_sum[:, None, :, None, None]


def random_maps(
    n: int, t: int, h: int, w: int, kind: Literal["relu", "negative"], seed: int = 0
) -> torch.Tensor:
    """Maps [N,T,h,w]: ReLU'd CAMs (>= 0 with zeros) or all-negative values."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(n, t, h, w, generator=gen)
    return m.clamp_min(0) if kind == "relu" else m - 3.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    """Same shape and dtype, max abs error <= atol."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol:.1g}"


def assert_uint8_close(actual: torch.Tensor, expected: torch.Tensor, normalized: torch.Tensor) -> None:
    """uint8 maps: equal, except off by one where round(255 m) is a near tie (|255 m - (j + .5)| < 1e-3,
    so an ulp of difference in m may round either way); ``normalized`` is the reference float map."""
    assert actual.dtype == torch.uint8 and expected.dtype == torch.uint8
    assert actual.shape == expected.shape
    diff = (actual.int() - expected.int()).abs()
    scaled = normalized.double() * 255.0
    near_tie = (scaled - scaled.floor() - 0.5).abs() < 1e-3
    assert diff.max().item() <= 1
    assert (diff[~near_tie] == 0).all(), f"{int((diff[~near_tie] != 0).sum())} pixels differ away from a tie"
