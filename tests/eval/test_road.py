"""ROAD's linear imputation and MoRF/LeRF curves against values worked out by hand, and its scores
against pytorch-grad-cam's ``metrics/road.py`` (the anchor, a test-only oracle) on the same inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camserve.errors import InvalidArgumentError
from camserve.eval.road import linear_imputation, road, road_count


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_imputed_pixel_is_the_weighted_mean_of_its_neighbours():
    image = torch.tensor([[5.0, 1.0, 6.0], [2.0, 99.0, 3.0], [7.0, 4.0, 8.0]]).reshape(1, 1, 3, 3)
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = linear_imputation(image, removed)
    # direct neighbours 1+2+3+4 at 1/6, diagonal 5+6+7+8 at 1/12, weights sum to 1
    assert float(out[0, 0, 1, 1]) == pytest.approx(10 / 6 + 26 / 12)
    assert torch.equal(
        out[~removed.unsqueeze(1).expand_as(out)], image[~removed.unsqueeze(1).expand_as(image)]
    )


def test_imputation_of_a_run_interpolates_linearly():
    image = torch.tensor([[0.0, 50.0, 50.0, 3.0]]).reshape(1, 1, 1, 4)
    removed = torch.tensor([[[False, True, True, False]]])
    assert linear_imputation(image, removed).flatten().tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgumentError, match="keep at least one pixel"):
        linear_imputation(image, torch.ones(1, 1, 4, dtype=torch.bool))


class SumForward:
    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        s = 0.1 * x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_morf_and_lerf_curves_by_hand():
    image = torch.tensor([[4.0, 0.0, 0.0, 4.0]]).reshape(1, 1, 1, 4)
    maps = torch.tensor([[[0.9, 0.1, 0.2, 0.3]]])  # ranks: pixel 0, 3, 2, 1
    result = road(SumForward(), image, maps, torch.tensor([0]), fractions=(0.25, 0.5), noise=0.0)
    # MoRF 25 %: pixel 0 <- its only neighbour, 0 -> sum 4; 50 %: pixels 0 and 3 <- 0 -> sum 0
    # LeRF 25 %: pixel 1 <- (4 + 0) / 2 -> sum 10; 50 %: pixels 1, 2 between 4 and 4 -> sum 16
    assert result.morf[0].tolist() == pytest.approx([sigmoid(0.4), sigmoid(0.0)], abs=1e-6)
    assert result.lerf[0].tolist() == pytest.approx([sigmoid(1.0), sigmoid(1.6)], abs=1e-6)
    assert float(result.morf_mean[0]) == pytest.approx((sigmoid(0.4) + 0.5) / 2, abs=1e-6)


def test_noise_is_seeded_and_only_on_imputed_pixels():
    image = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(1))
    first, second, clean = SumForward(), SumForward(), SumForward()
    a = road(first, image, maps, torch.tensor([0, 1]), fractions=(0.5,), noise=0.1, seed=3, batch_size=3)
    b = road(second, image, maps, torch.tensor([0, 1]), fractions=(0.5,), noise=0.1, seed=3, batch_size=3)
    road(clean, image, maps, torch.tensor([0, 1]), fractions=(0.5,), noise=0.0, batch_size=3)
    torch.testing.assert_close(a.morf, b.morf)
    # the perturbed images, then the 2 unperturbed ones (for the probability changes)
    noisy, plain = torch.cat(first.inputs)[:4], torch.cat(clean.inputs)[:4]
    torch.testing.assert_close(torch.cat(first.inputs)[4:], image)
    changed = (noisy - plain).abs().amax(dim=1) > 0  # [4,6,6]: MoRF/LeRF of image 0, then image 1
    assert changed.flatten(1).sum(1).tolist() == [18, 18, 18, 18]  # exactly the 50 % removed


def test_imputation_matches_a_direct_solve():
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 1, 10, 10, generator=generator, dtype=torch.float64)
    removed = torch.rand(1, 10, 10, generator=generator) < 0.8
    # dense system: for each removed i, sum_j w_ij (x_i - x_j) = 0 over in-image neighbours
    weights = {(-1, 0): 1 / 6, (1, 0): 1 / 6, (0, -1): 1 / 6, (0, 1): 1 / 6}
    weights.update({(dy, dx): 1 / 12 for dy in (-1, 1) for dx in (-1, 1)})
    unknown = [(r, c) for r in range(10) for c in range(10) if removed[0, r, c]]
    index = {p: i for i, p in enumerate(unknown)}
    a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    b = torch.zeros(len(unknown), dtype=torch.float64)
    for (r, c), i in index.items():
        for (dy, dx), wt in weights.items():
            q = (r + dy, c + dx)
            if 0 <= q[0] < 10 and 0 <= q[1] < 10:
                a[i, i] += wt
                if q in index:
                    a[i, index[q]] -= wt
                else:
                    b[i] += wt * image[0, 0, q[0], q[1]]
    expected = torch.linalg.solve(a, b)
    out = linear_imputation(image, removed)
    ours = torch.stack([out[0, 0, r, c] for r, c in unknown])
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_pixels", [4, 36, 1024, 4096, 50 * 50])
def test_road_count_is_the_anchors_percentile_threshold_on_distinct_values(num_pixels):
    values = np.random.default_rng(num_pixels).permutation(num_pixels).astype(np.float32) / num_pixels
    for percent in range(10, 100, 10):
        kept = values < np.percentile(values, percent)  # pytorch-grad-cam's RemoveMostRelevantFirst
        assert road_count(1 - percent / 100, num_pixels) == num_pixels - int(kept.sum()), percent


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))


def test_road_scores_equal_pytorch_grad_cams(monkeypatch):
    pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    # noise off in both: the anchor draws it from torch's global generator, camserve from a seeded one
    monkeypatch.setattr(
        pgc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc_road.neighbors_weights)
    )
    model = TinyNet().eval()
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    maps = torch.rand(2, 32, 32, generator=generator)  # distinct values: no ties
    classes = [1, 3]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    cams = maps.numpy()
    morf = pgc_road.ROADMostRelevantFirstAverage()(images, cams, targets, model)
    lerf = pgc_road.ROADLeastRelevantFirstAverage()(images, cams, targets, model)
    combined = pgc_road.ROADCombined()(images, cams, targets, model)

    with torch.no_grad():
        ours = road(model, images, maps, torch.tensor(classes), noise=0.0)
    assert ours.morf_change.tolist() == pytest.approx(morf.tolist(), abs=1e-5)
    assert ours.lerf_change.tolist() == pytest.approx(lerf.tolist(), abs=1e-5)
    assert ours.combined.tolist() == pytest.approx(combined.tolist(), abs=1e-5)
    assert ours.original.tolist() == pytest.approx(
        torch.softmax(model(images), 1)[[0, 1], classes].tolist(), abs=1e-6
    )
