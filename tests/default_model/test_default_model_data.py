"""The digits localisation generator: hand-checked pasting, exact boxes, determinism, VOC output."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from camserve.default_model.data import (
    digit_pool,
    ink_box,
    make_localisation_dataset,
    paste_digit,
    save_voc_folder,
    warp_digit,
)
from camserve.errors import InvalidArgumentError


def test_paste_digit_blends_ink_and_returns_the_ink_extent() -> None:
    image = torch.full((3, 5, 6), 0.2)
    alpha = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 1.0, 0.0]])
    box = paste_digit(image, alpha, x=2, y=1, grey=0.8)
    # The ink occupies alpha rows 1-2, cols 1-2 -> image rows 2-3, cols 3-4 (half-open ends +1).
    assert box == (3, 2, 5, 4)
    expected = torch.full((5, 6), 0.2)
    expected[2, 3] = 0.8  # alpha 1: pure grey
    expected[2, 4] = 0.2 * 0.5 + 0.8 * 0.5  # alpha 0.5: half background, half grey
    expected[3, 3] = 0.8
    for channel in range(3):
        torch.testing.assert_close(image[channel], expected, rtol=0, atol=1e-7)


def test_paste_digit_rejects_a_digit_that_does_not_fit() -> None:
    with pytest.raises(InvalidArgumentError, match="does not fit") as info:
        paste_digit(torch.zeros(3, 5, 5), torch.ones(3, 3), x=3, y=0, grey=1.0)
    assert info.value.argument == "x, y"


def test_ink_box_of_a_hand_drawn_map() -> None:
    alpha = torch.zeros(6, 7)
    alpha[1, 2] = 0.3
    alpha[4, 5] = 1.0
    assert ink_box(alpha) == (2, 1, 6, 5)
    with pytest.raises(InvalidArgumentError, match="no ink"):
        ink_box(torch.zeros(4, 4))


def test_warp_digit_identity_keeps_the_ink_and_cuts_faint_pixels() -> None:
    ink = torch.tensor([[0.05, 0.5], [1.0, 0.0]])
    torch.testing.assert_close(warp_digit(ink, 2, 2), torch.tensor([[0.0, 0.5], [1.0, 0.0]]))


def test_warp_digit_by_90_degrees_is_a_quarter_turn() -> None:
    ink = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 15
    ink = torch.where(ink >= 0.1, ink, 0.0)
    # out(x, y) samples in(-y, x): out[i, j] = in[j, n-1-i], which is torch.rot90 with k=1.
    torch.testing.assert_close(warp_digit(ink, 4, 4, 90.0), torch.rot90(ink, k=1), rtol=0, atol=1e-5)


def test_same_seed_gives_identical_tensors_and_another_seed_differs() -> None:
    first = make_localisation_dataset(12, seed=7, instances=(1, 3))
    second = make_localisation_dataset(12, seed=7, instances=(1, 3))
    other = make_localisation_dataset(12, seed=8, instances=(1, 3))
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.masks, second.masks)
    assert all(torch.equal(a, b) for a, b in zip(first.boxes, second.boxes, strict=True))
    assert not torch.equal(first.images, other.images)
    assert first.images.dtype == torch.float32 and first.labels.dtype == torch.int64
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0


def test_flat_background_is_exactly_the_outside_of_the_boxes() -> None:
    ds = make_localisation_dataset(30, seed=3, instances=(1, 4), textured=False)
    for image, boxes in zip(ds.images, ds.boxes, strict=True):
        inside = torch.zeros(image.shape[1:], dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.tolist():
            inside[y0:y1, x0:x1] = True
        outside = image[:, ~inside]  # [3, P]
        background = outside[:, :1]
        assert torch.equal(outside, background.expand_as(outside))
        differs = (image != background[:, :, None]).any(dim=0)  # [H, W]: a digit pixel
        for x0, y0, x1, y1 in boxes.tolist():
            # Every border row and column of the box holds ink: the box is tight.
            assert differs[y0, x0:x1].any() and differs[y1 - 1, x0:x1].any()
            assert differs[y0:y1, x0].any() and differs[y0:y1, x1 - 1].any()


def test_textured_masks_are_inside_tight_non_overlapping_boxes() -> None:
    ds = make_localisation_dataset(40, seed=5, instances=(2, 4))
    for mask, boxes in zip(ds.masks, ds.boxes, strict=True):
        assert 2 <= len(boxes) <= 4
        inside = torch.zeros_like(mask)
        for x0, y0, x1, y1 in boxes.tolist():
            assert not inside[y0:y1, x0:x1].any(), "copies overlap"
            inside[y0:y1, x0:x1] = True
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
        assert not (mask & ~inside).any()


def test_train_and_test_splits_use_disjoint_digits() -> None:
    train_ink, _ = digit_pool("train")
    test_ink, _ = digit_pool("test")
    assert len(train_ink) + len(test_ink) == 1797
    # No test digit is pixel-identical to a training digit either.
    distance = torch.cdist(test_ink.flatten(1), train_ink.flatten(1))
    assert float(distance.min()) > 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n": 0}, "n"),
        ({"instances": (0, 2)}, "instances"),
        ({"instances": (3, 2)}, "instances"),
        ({"instances": (1, 5)}, "instances"),
        ({"canvas": 20}, "canvas"),
        ({"split": "val"}, "split"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, argument: str) -> None:
    call = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(InvalidArgumentError) as info:
        make_localisation_dataset(**call)
    assert info.value.argument == argument


def test_voc_folder_round_trips_pixels_and_boxes(tmp_path) -> None:
    ds = make_localisation_dataset(3, seed=11, instances=(1, 3))
    root = save_voc_folder(ds, tmp_path / "voc")
    ids = (root / "ImageSets" / "Main" / "all.txt").read_text().split()
    assert ids == ["000000", "000001", "000002"]
    for i, image_id in enumerate(ids):
        pixels = torch.from_numpy(np.array(Image.open(root / "JPEGImages" / f"{image_id}.png")))
        expected = torch.round(ds.images[i] * 255).to(torch.uint8).permute(1, 2, 0)
        assert torch.equal(pixels, expected)
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        assert tree.findtext("filename") == f"{image_id}.png"
        assert tree.findtext("size/width") == "64" and tree.findtext("size/height") == "64"
        objects = tree.findall("object")
        assert [o.findtext("name") for o in objects] == [str(int(ds.labels[i]))] * len(ds.boxes[i])
        read = [[int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        # VOC: 1-based inclusive corners; half-open (x0, y0, x1, y1) -> (x0+1, y0+1, x1, y1).
        expected_boxes = (ds.boxes[i] + torch.tensor([1, 1, 0, 0])).tolist()
        assert read == expected_boxes
