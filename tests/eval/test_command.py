"""``camserve eval`` end to end on a few images of the default model's benchmark and on a VOC folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from camserve.cli import main
from camserve.default_model import load_default_model
from camserve.default_model.data import make_localisation_dataset, save_voc_folder
from camserve.eval.sanity import randomisation_order


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose cache holds the default model, exported once for this module."""
    root = tmp_path_factory.mktemp("eval-cache")
    path = root / "camserve.toml"
    path.write_text(f'[runtime]\ncache_dir = "{root / "cache"}"\nintra_op_threads = 1\n')
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_on_the_benchmark_writes_the_report(config_file: Path, tmp_path: Path):
    out = tmp_path / "report"
    argv = ["--config", str(config_file), "eval", "--images", "4", "--multi-images", "4", "--steps", "4"]
    argv += ["--method", "gradcam", "--method", "gradcam++", "--sanity-images", "2", "--examples", "2"]
    assert main([*argv, "--out", str(out)]) == 0

    rows = read_rows(out / "metrics.csv")
    # 8 images x (2 methods + 2 baselines)
    assert len(rows) == 32
    assert {r["method"] for r in rows} == {"gradcam", "gradcam++", "random", "centre_gaussian"}
    assert {r["subset"] for r in rows} == {"single-instance", "multi-instance (2-4)"}
    for r in rows:
        assert 0.0 <= float(r["iou_component"]) <= 1.0
        assert 0.0 <= float(r["deletion_auc"]) <= 1.0
        assert float(r["average_drop"]) >= 0.0
        assert r["pointing_game"] in ("0", "1")
    assert all(int(r["instances"]) >= 2 for r in rows if r["subset"].startswith("multi"))

    summary = (out / "summary.md").read_text()
    assert "camserve eval --images 4 --multi-images 4" in summary
    assert "| **gradcam++** |" in summary and "| *random* (baseline) |" in summary
    assert "Sanity check" in summary and "Grad-CAM++ light up more" in summary
    for figure in (
        "grid.png",
        "sanity.png",
        "curves_single-instance.png",
        "iou_top_vs_least_single-instance.png",
    ):
        assert (out / figure).stat().st_size > 1000
        assert f"]({figure})" in summary
    sanity = read_rows(out / "sanity.csv")
    layers = randomisation_order(load_default_model())  # fc first, then down to the first conv
    assert len(sanity) == 2 * len(layers) * 2  # methods x cascade stages x maps
    assert [r["randomised_down_to"] for r in sanity[: 2 * len(layers) : 2]] == layers


def test_eval_on_a_voc_folder(config_file: Path, tmp_path: Path):
    ds = make_localisation_dataset(3, seed=5, instances=(1, 3), split="test")
    save_voc_folder(ds, tmp_path / "voc")
    out = tmp_path / "report"
    argv = ["--config", str(config_file), "eval", "--data", str(tmp_path / "voc"), "--method", "gradcam"]
    argv += ["--no-curves", "--road", "--no-figures", "--sanity-images", "0", "--out", str(out)]
    assert main(argv) == 0
    rows = read_rows(out / "metrics.csv")
    assert [r["image"] for r in rows if r["method"] == "gradcam"] == ["000000", "000001", "000002"]
    assert [int(r["label"]) for r in rows if r["method"] == "gradcam"] == ds.labels.tolist()
    assert [int(r["instances"]) for r in rows if r["method"] == "gradcam"] == [len(b) for b in ds.boxes]
    assert "deletion_auc" not in rows[0]
    assert all(0.0 <= float(r["road_morf"]) <= 1.0 and 0.0 <= float(r["road_lerf"]) <= 1.0 for r in rows)
    for r in rows:  # every row, the random baseline's too
        combined = (float(r["road_lerf"]) - float(r["road_morf"])) / 2
        assert abs(float(r["road_combined"]) - combined) <= 1e-6
    assert {r["method"] for r in rows} >= {"gradcam", "random"}
    assert not list(out.glob("*.png"))


def test_eval_rejects_an_unknown_method(config_file: Path, tmp_path: Path, capsys):
    argv = ["--config", str(config_file), "eval", "--method", "nope", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err
