"""Baseline maps and the confidence interval, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from camserve.errors import InvalidArgumentError
from camserve.eval.baselines import baseline_maps, centre_gaussian_maps, random_maps
from camserve.eval.stats import mean_ci


def test_centre_gaussian_by_hand():
    g = centre_gaussian_maps(2, (4, 4))  # sigma = 0.25 * 4 = 1 px
    assert g.shape == (2, 4, 4)
    # the four central pixels are at distance^2 0.5 from the centre and hold the peak, 1
    assert g[0, 1:3, 1:3].flatten().tolist() == pytest.approx([1.0] * 4)
    # corner pixel: distance^2 4.5 -> exp(-2.25) / exp(-0.25) = exp(-2)
    assert float(g[0, 0, 0]) == pytest.approx(math.exp(-2.0), rel=1e-5)
    assert float(g[1, 0, 1]) == pytest.approx(math.exp(-(2.5 - 0.5) / 2), rel=1e-5)  # d^2 = 2.5


def test_random_maps_are_seeded_normalised_and_smooth_at_feature_size():
    a = random_maps(3, (16, 16), feature_size=(4, 4), generator=torch.Generator().manual_seed(0))
    b = random_maps(3, (16, 16), feature_size=(4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 16, 16)
    assert a.amin(dim=(1, 2)).tolist() == [0.0] * 3
    assert a.amax(dim=(1, 2)).tolist() == pytest.approx([1.0] * 3)
    # upsampled from 4x4: neighbouring pixels differ far less than in pixel noise
    pixel = random_maps(3, (16, 16), generator=torch.Generator().manual_seed(0))
    assert (a[:, :, 1:] - a[:, :, :-1]).abs().mean() < 0.5 * (pixel[:, :, 1:] - pixel[:, :, :-1]).abs().mean()
    with pytest.raises(InvalidArgumentError, match="baseline"):
        baseline_maps("uniform", 1, (4, 4))
    with pytest.raises(InvalidArgumentError, match="size"):
        random_maps(1, (0, 4))


def test_mean_ci_by_hand():
    # mean 2.5, s = sqrt(5/3) = 1.29099, t(0.975, 3) = 3.182446 -> 3.182446 * 1.29099 / 2 = 2.05426
    ci = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert ci.mean == pytest.approx(2.5)
    assert ci.half_width == pytest.approx(2.05426, abs=1e-5)
    assert ci.format(2) == "2.50 ± 2.05"
    assert mean_ci(torch.tensor([float("nan"), 1.0])).n == 1
    assert mean_ci(torch.tensor([])).format() == "–"
