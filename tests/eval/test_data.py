"""The VOC loader on folders the tests write: the benchmark saved as VOC, and a hand-made
ImageNet-style folder with an XML beside each image."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from camserve.default_model.data import make_localisation_dataset, save_voc_folder
from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.eval.data import BenchmarkData, VocFolder

CLASSES = [str(d) for d in range(10)]


def voc_xml(
    filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]
) -> str:
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )


def test_benchmark_saved_as_voc_reads_back_exactly(tmp_path: Path):
    ds = make_localisation_dataset(5, seed=1, instances=(2, 4), split="test")
    save_voc_folder(ds, tmp_path / "voc")
    data = VocFolder(tmp_path / "voc", CLASSES, size=(64, 64))
    assert len(data) == 5
    batch = next(data.batches(batch_size=8))
    assert batch.ids == [f"{i:06d}" for i in range(5)]
    assert batch.labels.tolist() == ds.labels.tolist()
    for ours, true in zip(batch.boxes, ds.boxes, strict=True):
        assert ours.tolist() == true.float().tolist()
    assert (batch.images - ds.images).abs().max() <= 0.5 / 255 + 1e-6  # PNG rounding only
    subset = VocFolder(tmp_path / "voc", CLASSES, size=(64, 64), image_set="all")
    assert len(subset) == 5


def test_imagenet_style_folder_resizes_boxes_and_skips_unannotated(tmp_path: Path, caplog):
    folder = tmp_path / "imgs" / "seven"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "a.png")
    # two 7s and one 3: the label is 7 and only the 7s' boxes are kept
    objects = [("7", (1, 1, 10, 10)), ("3", (5, 5, 6, 6)), ("7", (21, 11, 40, 20))]
    (folder / "a.xml").write_text(voc_xml("a.png", 40, 20, objects))
    Image.new("RGB", (8, 8)).save(folder / "b.png")  # no XML
    with caplog.at_level(logging.WARNING):
        data = VocFolder(tmp_path / "imgs", CLASSES, size=(10, 20))
    assert "1 images" in caplog.text
    batch = data.batch([0])
    assert batch.images.shape == (1, 3, 10, 20)
    assert batch.labels.tolist() == [7]
    # 1-based inclusive (1,1)-(10,10) -> half-open (0,0,10,10); then x / 2, y / 2 for 40x20 -> 20x10
    assert batch.boxes[0].tolist() == [[0.0, 0.0, 5.0, 5.0], [10.0, 5.0, 20.0, 10.0]]
    torch.testing.assert_close(batch.images[0, 0], torch.ones(10, 20))


def test_voc_loader_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(NotFoundError, match="no such directory"):
        VocFolder(tmp_path / "missing", CLASSES, size=(8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no images"):
        VocFolder(tmp_path / "empty", CLASSES, size=(8, 8))
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8)).save(bad / "x.png")
    (bad / "x.xml").write_text(voc_xml("x.png", 8, 8, [("dog", (1, 1, 4, 4))]))
    with pytest.raises(InvalidArgumentError, match="'dog' is not a class"):
        VocFolder(bad, CLASSES, size=(8, 8))
    (bad / "x.xml").write_text("<annotation><object>")
    with pytest.raises(InvalidArgumentError, match="not valid XML"):
        VocFolder(bad, CLASSES, size=(8, 8))


def test_benchmark_data_batches():
    data = BenchmarkData(5, seed=2, instances=(2, 4), size=(32, 32))
    batches = list(data.batches(batch_size=2, limit=3))
    assert [len(b) for b in batches] == [2, 1]
    assert batches[0].images.shape == (2, 3, 32, 32)
    ds = make_localisation_dataset(5, seed=2, instances=(2, 4), split="test")
    assert batches[0].boxes[1].tolist() == (ds.boxes[1].float() / 2).tolist()
    assert all(2 <= len(b) <= 4 for batch in batches for b in batch.boxes)
