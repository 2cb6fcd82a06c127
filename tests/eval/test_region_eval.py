"""Region evaluation of a dense model: the targets it builds (`camserve eval` on the dense default
model: tests/default_model/test_dense_model_export.py)."""

from __future__ import annotations

import torch

from camserve.eval.data import BenchmarkData, EvalBatch
from camserve.eval.evaluate import object_masks, region_targets


def test_one_region_target_per_object_padded_then_the_predicted_region() -> None:
    masks = [torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(3, 4, 4, dtype=torch.bool)]
    masks[0][0, 0, 0] = True
    for k in range(3):
        masks[1][k, k, :2] = True  # rows 0..2, two pixels each
    rows, valid = region_targets(torch.tensor([7, 2]), masks, (2, 2))
    assert valid.tolist() == [[True, False, False], [True, True, True]]
    assert [[t.kind for t in row] for row in rows] == [["region"] * 3 + ["predicted_region"]] * 2
    assert [[t.class_id for t in row] for row in rows] == [[7] * 4, [2] * 4]
    # on the 2x2 grid each cell averages its 2x2 pixels: one pixel -> 0.25, a half row -> 0.5
    assert rows[0][0].mask.tolist() == [[0.25, 0.0], [0.0, 0.0]]
    assert rows[0][1] is rows[0][0] and rows[0][2] is rows[0][0]  # padding repeats the last object
    assert [row.mask.tolist() for row in rows[1][:3]] == [
        [[0.5, 0.0], [0.0, 0.0]],
        [[0.5, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.5, 0.0]],
    ]
    assert rows[1][3].mask is None


def test_objects_are_the_benchmarks_masks_or_else_each_boxs_pixels() -> None:
    data = BenchmarkData(3, seed=4, instances=(2, 3))
    batch = data.batch(range(3))
    assert batch.masks is not None
    for masks, boxes in zip(object_masks(batch, 64, 64), batch.boxes, strict=True):
        assert masks.shape == (len(boxes), 64, 64) and int(masks.sum(0).max()) == 1
    boxes = [torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])]
    no_masks = EvalBatch(torch.zeros(1, 3, 4, 4), torch.tensor([0]), boxes, ["a"])
    (from_boxes,) = object_masks(no_masks, 4, 4)
    assert from_boxes.int().tolist() == [
        [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]],
    ]
