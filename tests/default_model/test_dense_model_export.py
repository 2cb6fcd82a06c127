"""The dense default model exported (once for this module, output kind "dense"), explained with
region targets, and scored by `camserve eval` against the true masks above the random baseline."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from camserve import Explainer
from camserve.cli import main
from camserve.default_model import DENSE_CLASS_NAMES, dense_model_dir, load_dense_model
from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import normalize
from camserve.methods.target_kinds import Target
from camserve.modeldir import ModelDirectory


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dense_dir(cache: Path) -> Path:
    """`camserve default-model build --dense` into a fresh cache named by the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAMSERVE_RUNTIME_CACHE_DIR", str(cache))
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            assert main(["default-model", "build", "--dense"]) == 0
    return Path(output.getvalue().strip())


def test_the_dense_model_exports_with_output_kind_dense(dense_dir: Path, cache: Path) -> None:
    assert dense_dir.parent == cache and dense_dir.name.startswith("dense-model-")
    manifest = ModelDirectory(dense_dir).manifest
    assert (manifest.output_kind, list(manifest.output_shape)) == ("dense", [11, 64, 64])
    assert manifest.class_names == DENSE_CLASS_NAMES and manifest.target_layer == "features"
    assert dense_model_dir(str(cache)) == dense_dir  # later uses find it


def _means(path: Path, metric: str) -> dict[str, float]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["method"], []).append(float(row[metric]))
    return {name: sum(v) / len(v) for name, v in out.items()}


def test_camserve_eval_scores_region_maps_above_the_random_baseline(dense_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["eval", "--model", str(dense_dir), "--images", "8", "--multi-images", "8", "--method", "gradcam"]
    assert main([*argv, "--no-figures", "--out", str(out)]) == 0
    metrics = out / "metrics.csv"
    energy, pointing = _means(metrics, "region_energy"), _means(metrics, "region_pointing")
    area = _means(metrics, "mask_area")["gradcam"]
    assert set(energy) == {"gradcam", "random", "centre_gaussian"}
    # the random map's energy sits near the masks' share of the image; Grad-CAM's is several times it
    assert energy["random"] < 3 * area
    assert energy["gradcam"] > 3 * energy["random"]
    assert pointing["gradcam"] > pointing["random"] + 0.4
    assert _means(metrics, "predicted_energy")["gradcam"] > 3 * energy["random"]
    summary = (out / "summary.md").read_text()
    assert "energy in mask %" in summary and "mask area % (chance)" in summary
    assert "## single-instance: 8 images" in summary and "## multi-instance (2-4): 8 images" in summary


def test_segeigencam_of_a_region_equals_pytorch_grad_cams_on_the_same_mask(dense_dir: Path) -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import SegEigenCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    ds = make_localisation_dataset(3, seed=7, instances=(2, 2), split="test")
    images = normalize(ds.images)
    masks = [ds.instance_masks(i)[0].numpy() for i in range(3)]  # each image's first copy
    labels = ds.labels.tolist()
    rows = [[Target("region", class_id=c, mask=m)] for c, m in zip(labels, masks, strict=True)]
    ours = Explainer(dense_dir).explain(images, methods="segeigencam", targets=rows).maps["segeigencam"][:, 0]
    model = load_dense_model()
    targets = [
        SemanticSegmentationTarget(c, m.astype(np.float32)) for c, m in zip(labels, masks, strict=True)
    ]
    with SegEigenCAM(model, [model.features]) as cam:
        theirs = cam(input_tensor=images.clone(), targets=targets)
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert float(np.abs(ours - theirs).max()) <= 2e-3
    # the map of one copy's region lies mostly on that copy
    inside = [float((ours[i] * masks[i]).sum() / ours[i].sum()) for i in range(3)]
    assert min(inside) > float(torch.tensor(np.stack(masks)).float().mean()) * 3


def test_build_dense_refuses_retrain_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["default-model", "build", "--dense", "--retrain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retrain" in err[0] and "train --dense" in err[0]


def _peak_in_box(cam: torch.Tensor, box: tuple[float, ...]) -> bool:
    y, x = np.unravel_index(int(cam.argmax()), tuple(cam.shape))
    x0, y0, x1, y1 = box
    return bool(x0 <= x < x1 and y0 <= y < y1)


def test_the_docs_picture_of_every_output_kind(dense_dir: Path, cache: Path, tmp_path: Path) -> None:
    """docs/targets.md's picture: one trained digits model per output kind, explained with its natural
    targets; a region or box target on one of two copies of the digit lands on that copy."""
    from camserve.default_model.examples import draw_kinds_example, kinds_example_maps

    image, panels = kinds_example_maps(cache_dir=str(cache))
    assert image.shape == (3, 64, 64)
    kinds = [(kind, title.split(" ")[0]) for kind, title, _, _ in panels]
    assert kinds == [
        ("classification", "logit"),
        ("classification", "probability"),
        ("classification", "sigmoid"),
        ("dense", "region"),
        ("dense", "predicted_region"),
        ("detection", "box"),
        ("embedding", "cosine_image"),
        ("embedding", "cosine_image"),
    ]
    for kind, title, cam, box in panels:
        assert cam.shape == (64, 64) and float(cam.min()) == 0.0 and float(cam.max()) == 1.0, title
        if box is not None:  # the region and box targets name the lower copy: their peak is on it
            assert _peak_in_box(cam, box), f"{kind}: {title}"
    # a probability's map is not its logit's: the softmax subtracts the other classes' gradients
    assert float((panels[0][2] - panels[1][2]).abs().max()) > 1e-3
    out = draw_kinds_example(tmp_path / "kinds.png", image, panels, "layercam")
    assert out.stat().st_size > 10_000
