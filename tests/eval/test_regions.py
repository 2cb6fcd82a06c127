"""Golden values for the region metrics (energy inside a mask, pointing on a mask), worked out by hand."""

from __future__ import annotations

import pytest
import torch

from camserve.errors import InvalidArgumentError
from camserve.eval.regions import energy_in_mask, mask_area, masks_on_grid, pointing_in_mask

# sum 20, peak 10 at (row 2, col 2)
MAP = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 0.0], [0.0, 0.0, 10.0]])
# (0,1) and (0,2): 1 + 2 = 3 of the 20 inside; the nearest mask pixel to the peak, (0,2), is 2 px away
TOP = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
# (1,0), (1,1), (2,2): 3 + 4 + 10 = 17 of 20, peak on it
LOWER = torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)


def test_energy_is_the_share_of_the_maps_sum_inside_the_mask() -> None:
    maps = torch.stack([MAP, MAP, torch.zeros(3, 3)])
    masks = torch.stack([TOP, LOWER, LOWER])
    energy = energy_in_mask(maps, masks)
    torch.testing.assert_close(energy, torch.tensor([0.15, 0.85, 0.0]))  # a zero map has no energy
    # a scale of the map changes nothing; the full mask holds all of it
    torch.testing.assert_close(energy_in_mask(7 * MAP[None], TOP[None]), torch.tensor([0.15]))
    torch.testing.assert_close(energy_in_mask(MAP[None], torch.ones(1, 3, 3)), torch.tensor([1.0]))


def test_pointing_hits_when_the_peak_is_on_the_mask_or_within_the_tolerance() -> None:
    maps = torch.stack([MAP, MAP])
    masks = torch.stack([TOP, LOWER])
    assert pointing_in_mask(maps, masks).tolist() == [False, True]
    assert pointing_in_mask(MAP[None], TOP[None], tolerance=2.0).tolist() == [True]  # (2,2) -> (0,2): 2 px
    assert pointing_in_mask(MAP[None], TOP[None], tolerance=1.99).tolist() == [False]


def test_pointing_takes_the_first_peak_and_misses_on_constant_maps_and_empty_masks() -> None:
    tied = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # (0,1) comes first
    maps = torch.stack([tied, tied, torch.full((3, 3), 0.5), MAP])
    masks = torch.stack([TOP, LOWER, torch.ones(3, 3, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool)])
    assert pointing_in_mask(maps, masks).tolist() == [True, False, False, False]


def test_image_masks_broadcast_over_the_targets_of_an_image() -> None:
    maps = torch.stack([MAP, MAP.flip(0)])[None]  # [1,2,3,3]: two targets of one image
    # the flipped map is [[0,0,10],[3,4,0],[0,1,2]]: 0 + 0 + 10 of 20 in TOP (10 at (0,2))
    torch.testing.assert_close(energy_in_mask(maps, TOP[None]), torch.tensor([[0.15, 0.5]]))
    assert pointing_in_mask(maps, TOP[None]).tolist() == [[False, True]]


def test_mask_area_is_the_energy_of_a_uniform_map() -> None:
    masks = torch.stack([TOP, LOWER])
    torch.testing.assert_close(mask_area(masks), torch.tensor([2 / 9, 3 / 9]))
    torch.testing.assert_close(energy_in_mask(torch.ones(2, 3, 3), masks), mask_area(masks))


def test_masks_on_a_coarser_grid_average_each_cells_pixels() -> None:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True  # the whole top-left cell
    mask[2, 2] = True  # one of the bottom-right cell's four pixels
    assert masks_on_grid(mask, (2, 2)).tolist() == [[1.0, 0.0], [0.0, 0.25]]
    assert masks_on_grid(mask[None], (4, 4)).tolist() == [mask.float().tolist()]


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="maps"):
        energy_in_mask(-MAP[None], TOP[None])
    with pytest.raises(InvalidArgumentError, match="masks"):
        energy_in_mask(MAP[None], TOP[None, :2])
    with pytest.raises(InvalidArgumentError, match="maps"):
        pointing_in_mask(MAP.long()[None], TOP[None])
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        pointing_in_mask(MAP[None], TOP[None], tolerance=-1.0)
