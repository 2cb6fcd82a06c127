"""Region evaluation of a dense model: the targets it builds, and `camserve eval` on the dense
default model (exported once per module) beating the random baseline."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from camserve.cli import main
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


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from camserve.default_model import dense_model_dir

    return dense_model_dir(str(tmp_path_factory.mktemp("cache")))


def _means(path: Path, metric: str) -> dict[str, float]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["method"], []).append(float(row[metric]))
    return {name: sum(v) / len(v) for name, v in out.items()}


def test_camserve_eval_scores_the_dense_models_region_maps_above_the_random_baseline(
    dense_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--model", str(dense_dir), "--images", "8", "--multi-images", "8", "--method", "gradcam"]
    with caplog.at_level(logging.INFO):
        assert main([*argv, "--no-figures", "--out", str(out)]) == 0
    energy = _means(out / "metrics.csv", "region_energy")
    pointing = _means(out / "metrics.csv", "region_pointing")
    area = _means(out / "metrics.csv", "mask_area")
    assert set(energy) == {"gradcam", "random", "centre_gaussian"}
    # the random map's energy sits near the masks' share of the image; Grad-CAM's is several times it
    assert energy["random"] < 3 * area["gradcam"]
    assert energy["gradcam"] > 3 * energy["random"]
    assert pointing["gradcam"] > pointing["random"] + 0.4
    assert _means(out / "metrics.csv", "predicted_energy")["gradcam"] > 3 * energy["random"]
    summary = (out / "summary.md").read_text()
    assert "energy in mask %" in summary and "mask area % (chance)" in summary
    assert "single-instance: 8 images" in summary and "multi-instance (2-4): 8 images" in summary
