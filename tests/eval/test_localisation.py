"""Golden values for the localisation metrics on 4x4 and 8x8 maps, worked out by hand."""

from __future__ import annotations

import pytest
import torch

from camserve.errors import InvalidArgumentError
from camserve.eval.localisation import (
    best_box_iou,
    box_iou,
    connected_components,
    default_pointing_tolerance,
    energy_pointing_game,
    instance_coverage,
    largest_component_box,
    localisation_error,
    mask_box,
    pairwise_iou,
    pointing_game,
    top_fraction_box,
)

# Two segments above 15 % of the max (0.15): A = {(0,0) 1.0, (0,1) .9, (1,0) .8} (3 pixels) and
# B = {(2,3) .2, (3,1) .5, (3,2) .6, (3,3) .7} (4 pixels, (2,3) joins via (3,2)/(3,3)); 0.1 is below.
MAP = torch.tensor(
    [
        [1.0, 0.9, 0.0, 0.0],
        [0.8, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.1, 0.2],
        [0.0, 0.5, 0.6, 0.7],
    ]
)


def test_mask_box_is_half_open_and_empty_for_empty_masks():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = mask[0, 2, 3] = True
    assert mask_box(mask).tolist() == [[1, 1, 4, 3], [0, 0, 0, 0]]


def test_top_fraction_box():
    # top 25 % of 16 pixels = 4 pixels: 1.0, 0.9, 0.8, 0.7 -> rows 0..3, columns 0..3
    assert top_fraction_box(MAP[None]).tolist() == [[0, 0, 4, 4]]
    # top 3/16: 1.0, 0.9, 0.8 -> (0,0),(0,1),(1,0)
    assert top_fraction_box(MAP[None], fraction=3 / 16).tolist() == [[0, 0, 2, 2]]


def test_largest_component_box_at_15_percent_and_higher_threshold():
    assert largest_component_box(MAP[None]).tolist() == [[1, 2, 4, 4]]  # segment B
    # at 65 %: A (3 pixels) and (3,3) alone
    assert largest_component_box(MAP[None], threshold=0.65).tolist() == [[0, 0, 2, 2]]
    assert largest_component_box(torch.zeros(1, 4, 4)).tolist() == [[0, 0, 0, 0]]


@pytest.mark.parametrize("backend", ["scipy", "propagate"])
def test_connected_components_are_8_connected_and_labelled_by_last_pixel(backend):
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)[None]
    labels = connected_components(mask, backend)
    # {(0,0), (1,1)}: last pixel index 5 -> label 6; {(0,3), (1,3)}: index 7 -> label 8
    assert labels.tolist() == [[[6, 0, 0, 8], [0, 6, 0, 8], [0, 0, 0, 0]]]


@pytest.mark.parametrize("backend", ["scipy", "propagate"])
def test_connected_components_match_scipy_partition(backend):
    from scipy import ndimage

    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(5, 24, 24, generator=generator) > 0.55
    labels = connected_components(masks, backend)
    if backend == "propagate":
        torch.testing.assert_close(labels, connected_components(masks, "scipy"))
    for i in range(5):
        expected, count = ndimage.label(masks[i].numpy(), structure=[[1, 1, 1]] * 3)
        ours = labels[i]
        assert len(torch.unique(ours[ours > 0])) == count
        # same partition: a one-to-one mapping between the two labellings
        pairs = {
            (int(a), int(b))
            for a, b in zip(ours.flatten(), torch.from_numpy(expected).flatten(), strict=True)
        }
        assert len(pairs) == count + 1


def test_pairwise_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    # overlap 1 pixel, union 4 + 4 - 1 = 7
    assert pairwise_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0])
    assert pairwise_iou(torch.zeros(1, 4), torch.zeros(1, 4)).tolist() == [[0.0]]


def test_box_iou_takes_the_best_true_box():
    boxes = [torch.tensor([[0, 0, 2, 3], [1, 2, 4, 4]])]
    # component box (1,2,4,4) equals the second true box
    assert box_iou(MAP[None], boxes, method="component").tolist() == [1.0]
    # top-25 % box (0,0,4,4) (16 px) against (0,0,2,3) (6 px) -> 6/16, and (1,2,4,4) (6 px) -> 6/16
    assert box_iou(MAP[None], boxes, method="top_fraction").tolist() == pytest.approx([6 / 16])
    assert best_box_iou(torch.tensor([[0.0, 0, 1, 1]]), [torch.zeros(0, 4)]).tolist() == [0.0]
    with pytest.raises(InvalidArgumentError, match="method"):
        box_iou(MAP[None], boxes, method="cc")
    with pytest.raises(InvalidArgumentError, match="boxes"):
        box_iou(MAP[None], boxes + boxes)


def test_localisation_error_needs_right_class_and_iou_at_least_half():
    maps = MAP.expand(3, 4, 4)
    good = torch.tensor([[1, 2, 4, 4]])  # IoU 1 with the component box
    half = torch.tensor([[1, 2, 4, 3]])  # 3 px inside the 6 px box: IoU 0.5 -> not an error
    boxes = [good, good, half]
    errors = localisation_error(
        maps, boxes, predicted=torch.tensor([3, 4, 3]), labels=torch.tensor([3, 3, 3])
    )
    assert errors.tolist() == [False, True, False]  # image 1: wrong class
    smaller = [torch.tensor([[2, 2, 4, 3]])] * 3  # 2 px / 6 px = 1/3 < 0.5
    errors = localisation_error(
        maps, smaller, predicted=torch.tensor([3, 3, 3]), labels=torch.tensor([3, 3, 3])
    )
    assert errors.tolist() == [True, True, True]


def test_pointing_game_with_tolerance():
    m = torch.zeros(1, 8, 8)
    m[0, 2, 5] = 1.0  # peak at row 2, column 5
    box = [torch.tensor([[0, 0, 3, 3]])]  # columns 0..2, rows 0..2: the peak is 3 columns away
    assert pointing_game(m, box, tolerance=2.9).tolist() == [False]
    assert pointing_game(m, box, tolerance=3.0).tolist() == [True]
    assert default_pointing_tolerance(8, 8) == pytest.approx(15 * 8 / 224)
    assert pointing_game(m, box).tolist() == [False]
    # diagonal distance: box columns 0..2, rows 4..7 vs peak (2,5): dx 3, dy 2 -> sqrt(13) = 3.606
    diag = [torch.tensor([[0, 4, 3, 8]])]
    assert pointing_game(m, diag, tolerance=3.6).tolist() == [False]
    assert pointing_game(m, diag, tolerance=3.61).tolist() == [True]
    inside = [torch.tensor([[5, 2, 6, 3]])]
    assert pointing_game(m, inside, tolerance=0.0).tolist() == [True]
    # a constant map points nowhere
    assert pointing_game(torch.ones(1, 8, 8), [torch.tensor([[0, 0, 8, 8]])]).tolist() == [False]


def test_pointing_game_with_several_maps_per_image():
    m = torch.zeros(2, 2, 8, 8)
    m[0, 0, 1, 1] = m[0, 1, 6, 6] = m[1, 0, 6, 6] = m[1, 1, 1, 1] = 1.0
    boxes = [torch.tensor([[0, 0, 2, 2]]), torch.tensor([[5, 5, 8, 8]])]
    assert pointing_game(m, boxes, tolerance=0).tolist() == [[True, False], [True, False]]


def test_energy_pointing_game_counts_overlaps_once():
    boxes = [torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]]), torch.tensor([[0, 0, 2, 2]])]
    maps = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    # union of the two boxes covers 4 + 4 - 1 = 7 pixels of 16
    assert energy_pointing_game(maps, boxes).tolist() == pytest.approx([7 / 16, 0.0])
    weighted = torch.zeros(1, 4, 4)
    weighted[0, 0, 0], weighted[0, 3, 3] = 3.0, 1.0
    assert energy_pointing_game(weighted, boxes[1:]).tolist() == pytest.approx([0.75])
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        energy_pointing_game(-maps, boxes)


def test_instance_coverage():
    m = torch.zeros(1, 8, 8)
    m[0, 1, 1] = 1.0
    m[0, 6, 6] = 0.4
    boxes = [torch.tensor([[0, 0, 3, 3], [5, 5, 8, 8], [0, 5, 2, 8]])]
    # box 0 holds the peak; box 1 holds 0.4 (>= 0.3 but < 0.5); box 2 holds 0
    assert instance_coverage(m, boxes).tolist() == pytest.approx([1 / 3])
    assert instance_coverage(m, boxes, level=0.3).tolist() == pytest.approx([2 / 3])
    assert instance_coverage(torch.zeros(1, 8, 8), boxes).tolist() == [0.0]
    # a map bright everywhere reaches its max in every box but is no brighter than the background
    assert instance_coverage(torch.ones(1, 8, 8), boxes).tolist() == [0.0]
    # background: rows 3-4 at 0.05 -> mean over the 40 pixels outside the boxes 0.8 / 40 = 0.02;
    # box means 1/9 = 0.111 and 0.4/9 = 0.044: both above 2 x 0.02, only box 0 above 3 x 0.02
    lifted = m.clone()
    lifted[0, 3:5, :] = 0.05
    assert instance_coverage(lifted, boxes, level=0.3).tolist() == pytest.approx([2 / 3])
    assert instance_coverage(lifted, boxes, level=0.3, contrast=3.0).tolist() == pytest.approx([1 / 3])
    # boxes covering the whole image: only the level applies
    whole = [torch.tensor([[0, 0, 8, 4], [0, 4, 8, 8]])]
    assert instance_coverage(m, whole, level=0.3).tolist() == pytest.approx([1.0])
