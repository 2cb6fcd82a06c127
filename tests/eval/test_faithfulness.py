"""Golden values for the faithfulness metrics, computed by hand on 2x2 images with a forward() that
is a known function: logits = [0.1 * sum of pixels, 0], so p(class 0) = sigmoid(0.1 * sum)."""

from __future__ import annotations

import math

import pytest
import torch

from camserve.errors import InvalidArgumentError
from camserve.eval.faithfulness import (
    black_baseline,
    blurred_images,
    count_of_fraction,
    deletion_insertion_curve,
    explanation_map_confidence,
    pixel_ranks,
    top_fraction_confidence,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class SumForward:
    """logits [B,2] = [scale * sum(x), 0]; records the batch sizes it was called with."""

    def __init__(self, scale: float = 0.1) -> None:
        self.scale = scale
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        s = self.scale * x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


IMAGE = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
# ranking: 0.9 (pixel 0, value 1), 0.5 (pixel 2, value 3), 0.2 (pixel 3, value 4), 0.1 (pixel 1, value 2)
MAP = torch.tensor([[0.9, 0.1], [0.5, 0.2]]).reshape(1, 2, 2)


def test_pixel_ranks_descending_with_stable_ties():
    maps = torch.tensor([[[0.1, 0.9], [0.9, 0.0]]])
    assert pixel_ranks(maps).tolist() == [[2, 0, 1, 3]]
    assert pixel_ranks(MAP).tolist() == [[0, 3, 1, 2]]


def test_count_of_fraction_rounds_half_up():
    assert count_of_fraction(0.25, 16) == 4
    assert count_of_fraction(0.25, 10) == 3  # 2.5 -> 3
    assert count_of_fraction(0.25, 9) == 2  # 2.25 -> 2


def test_black_baseline_is_minus_mean_over_std():
    b = black_baseline([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    assert b.shape == (3, 1, 1)
    assert b.flatten().tolist() == [-1.0, -1.0, 0.0]
    with pytest.raises(InvalidArgumentError, match="std"):
        black_baseline([0.5], [0.0])


def test_average_drop_and_increase_in_confidence_by_hand():
    forward = SumForward(scale=1.0)
    images = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)])
    maps = torch.stack([torch.tensor([[1.0, 0.5], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])])
    # image 0 blends towards 0, image 1 towards 1 (per-image baselines)
    baseline = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1)
    result = explanation_map_confidence(forward, images, maps, torch.tensor([0, 0]), baseline=baseline)
    # image 0: sum 4 -> Y = sigmoid(4); E = [1, .5, 0, 0], sum 1.5 -> O = sigmoid(1.5)
    # image 1: sum 2 -> Y = sigmoid(2); E = [.5, 1, 1, 1], sum 3.5 -> O = sigmoid(3.5) > Y
    y0, o0, y1, o1 = sigmoid(4), sigmoid(1.5), sigmoid(2), sigmoid(3.5)
    assert result.original.tolist() == pytest.approx([y0, y1], abs=1e-6)
    assert result.perturbed.tolist() == pytest.approx([o0, o1], abs=1e-6)
    assert result.drop.tolist() == pytest.approx([(y0 - o0) / y0 * 100, 0.0], abs=1e-4)
    assert float(result.drop.mean()) == pytest.approx((y0 - o0) / y0 * 50, abs=1e-4)  # 8.3725 %
    assert result.increase.tolist() == [False, True]


def test_average_drop_needs_unit_range_maps():
    with pytest.raises(InvalidArgumentError, match="maps"):
        explanation_map_confidence(SumForward(), IMAGE, MAP * 2, torch.tensor([0]))


def test_keep_and_remove_top_half_by_hand():
    forward = SumForward()
    targets = torch.tensor([0])
    keep = top_fraction_confidence(forward, IMAGE, MAP, targets, fraction=0.5, keep=True)
    remove = top_fraction_confidence(forward, IMAGE, MAP, targets, fraction=0.5, keep=False)
    # top half = pixels 0 and 2 (values 1 and 3): kept image sums to 4, removed image to 2 + 4 = 6
    y = sigmoid(1.0)
    assert float(keep.perturbed[0]) == pytest.approx(sigmoid(0.4), abs=1e-6)
    assert float(remove.perturbed[0]) == pytest.approx(sigmoid(0.6), abs=1e-6)
    assert float(keep.change[0]) == pytest.approx((sigmoid(0.4) - y) / y * 100, abs=1e-4)
    assert float(remove.change[0]) == pytest.approx((sigmoid(0.6) - y) / y * 100, abs=1e-4)


def test_deletion_and_insertion_curves_by_hand():
    forward = SumForward()
    targets = torch.tensor([0])
    deletion = deletion_insertion_curve(forward, IMAGE, MAP, targets, mode="deletion", steps=4, batch_size=3)
    # pixels leave in the order values 1, 3, 4, 2: sums 10, 9, 6, 2, 0
    expected = [sigmoid(0.1 * s) for s in (10, 9, 6, 2, 0)]
    assert deletion.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert deletion.curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    trapezoid = 0.25 * (sum(expected) - (expected[0] + expected[-1]) / 2)
    assert float(deletion.auc[0]) == pytest.approx(trapezoid, abs=1e-6)
    assert forward.batches == [3, 2]  # 5 perturbed images in chunks of 3

    insertion = deletion_insertion_curve(
        forward, IMAGE, MAP, targets, mode="insertion", steps=2, baseline=0.0
    )
    # 0 then 2 then 4 pixels inserted: sums 0, 1 + 3, 10
    expected = [sigmoid(0.0), sigmoid(0.4), sigmoid(1.0)]
    assert insertion.curve[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(insertion.auc[0]) == pytest.approx(0.5 * (expected[0] / 2 + expected[1] + expected[2] / 2))


def test_curves_with_several_targets_per_image():
    forward = SumForward()
    maps = torch.stack([MAP[0], MAP[0].flip(-1)]).unsqueeze(0)  # [1,2,2,2]
    targets = torch.tensor([[0, 1]])
    result = deletion_insertion_curve(forward, IMAGE, maps, targets, steps=4)
    assert result.curve.shape == (1, 2, 5)
    assert result.auc.shape == (1, 2)
    # the flipped map ranks values 2, 4, 3, 1: sums 10, 8, 4, 1, 0; class 1 has p = 1 - sigmoid
    expected = [1 - sigmoid(0.1 * s) for s in (10, 8, 4, 1, 0)]
    assert result.curve[0, 1].tolist() == pytest.approx(expected, abs=1e-6)


def test_curve_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="mode"):
        deletion_insertion_curve(SumForward(), IMAGE, MAP, torch.tensor([0]), mode="erase")
    with pytest.raises(InvalidArgumentError, match="steps"):
        deletion_insertion_curve(SumForward(), IMAGE, MAP, torch.tensor([0]), steps=5)
    with pytest.raises(InvalidArgumentError, match="maps"):
        deletion_insertion_curve(SumForward(), IMAGE, MAP[:, :1], torch.tensor([0]))
    with pytest.raises(InvalidArgumentError, match="targets"):
        deletion_insertion_curve(SumForward(), IMAGE, MAP, torch.tensor([0, 1]))
    with pytest.raises(InvalidArgumentError, match="baseline"):
        deletion_insertion_curve(
            SumForward(), IMAGE, MAP, torch.tensor([0]), steps=4, baseline=torch.zeros(3, 3)
        )
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        deletion_insertion_curve(SumForward(), IMAGE, MAP, torch.tensor([0]), steps=4, batch_size=0)


def test_blur_matches_torchvision_and_keeps_constant_images():
    from torchvision.transforms.functional import gaussian_blur

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = blurred_images(images, sigma=1.5)
    theirs = gaussian_blur(images, kernel_size=[11, 11], sigma=[1.5, 1.5])  # radius ceil(4.5) = 5
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(blurred_images(flat), flat)
