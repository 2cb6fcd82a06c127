"""The maps graph (maps.onnx): its maps equal camserve.Explainer's for every method it holds, on the
default model and a torchvision ResNet-18; the manifest describes it; the export refuses what it
cannot hold and its verification fails a graph with wrong maths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from camserve import Explainer
from camserve.cli import main
from camserve.config import CamserveConfig, ExplainOptions
from camserve.default_model import default_model_dir
from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import normalize
from camserve.errors import ExportError, InvalidArgumentError, UnsupportedError
from camserve.export import export_model
from camserve.export.architectures import build_torchvision
from camserve.export.maps import MapsOptions, add_maps_graph, graph_methods, output_name
from camserve.methods.gradient import GradCAM, GradCAMPlusPlus
from camserve.modeldir import MANIFEST_NAME, ModelDirectory

ALL = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam")
TARGETS = [[-1, 3, -2], [-1, 0, 7], [-3, 5, -1], [2, -1, 9]]  # ranks and ids, T = 3


def _run_maps(
    model_dir: ModelDirectory, images: torch.Tensor, targets: list[list[int]]
) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_dir.graph_path("maps")), providers=["CPUExecutionProvider"])
    ids = np.asarray(targets, np.int64)
    feed = {"images": images.numpy(), "targets": ids, "target_kinds": np.zeros_like(ids)}  # kind 0: logit
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def _assert_equal_to_explainer(
    model_dir: ModelDirectory, images: torch.Tensor, targets: list[list[int]], output_size: str
) -> None:
    info = model_dir.manifest.maps
    assert info is not None
    got = _run_maps(model_dir, images, targets)
    config = CamserveConfig(explain=ExplainOptions(output_size=output_size))
    want = Explainer(model_dir, config=config).explain(images, methods=info.methods, targets=targets)
    np.testing.assert_array_equal(got["target_ids"], want.target_ids)
    np.testing.assert_allclose(got["logits"], want.logits, rtol=1e-5, atol=1e-5)
    for method in info.methods:
        maps = got[output_name(method)]
        assert maps.dtype == np.float32 and maps.shape == want.maps[method].shape
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        np.testing.assert_allclose(maps, want.maps[method], rtol=0, atol=1e-5, err_msg=method)
        assert (maps.max(axis=(-2, -1)) == 1.0).sum() >= 1  # normalised, not all-zero maps


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> ModelDirectory:
    """A copy of the default model's directory (the cached export) with a maps graph of six methods
    at the input size. ``export_model(maps=...)`` itself is exercised by the ResNet-18 test."""
    path = tmp_path_factory.mktemp("maps") / "digits"
    shutil.copytree(default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir), path)
    return add_maps_graph(path, MapsOptions(methods=ALL))


@pytest.fixture(scope="module")
def digit_images() -> torch.Tensor:
    return normalize(make_localisation_dataset(4, seed=5, instances=(1, 2)).images)


def test_default_model_maps_equal_the_explainers(digits_dir, digit_images) -> None:
    _assert_equal_to_explainer(digits_dir, digit_images, TARGETS, "input")


def test_manifest_names_the_graph_its_inputs_and_outputs(digits_dir) -> None:
    manifest = ModelDirectory(digits_dir.path).manifest  # read back from JSON
    assert manifest.graphs["maps"].file == "maps.onnx"
    info = manifest.maps
    assert info is not None
    assert info.methods == list(ALL)
    assert info.inputs == ["images", "targets", "target_kinds"]
    expected = ["logits", "target_ids"] + [f"maps_{m}" for m in ("gradcam", "gradcampp", "xgradcam")]
    assert info.outputs == expected + ["maps_layercam", "maps_hirescam", "maps_cam"]
    assert (info.size, info.dtype, info.eps) == ([64, 64], "float32", 1e-7)
    session = ort.InferenceSession(str(digits_dir.graph_path("maps")), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == info.inputs
    assert [i.shape for i in session.get_inputs()] == [
        ["batch", 3, 64, 64],
        ["batch", "targets"],
        ["batch", "targets"],
    ]
    assert [o.name for o in session.get_outputs()] == info.outputs
    assert [o.shape for o in session.get_outputs()][2:] == [["batch", "targets", 64, 64]] * 6


def test_uint8_feature_size_maps_added_to_an_existing_directory(digits_dir, digit_images, tmp_path) -> None:
    """--from-model path: the maps graph replaced in place, uint8 at the feature size (16x16)."""
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir.path, copy)
    methods = ("gradcam++", "layercam")
    model_dir = add_maps_graph(copy, MapsOptions(methods=methods, output_size="feature", dtype="uint8"))
    assert model_dir.manifest.maps is not None and model_dir.manifest.maps.size == [16, 16]
    got = _run_maps(model_dir, digit_images, TARGETS)
    assert sorted(got) == ["logits", "maps_gradcampp", "maps_layercam", "target_ids"]
    config = CamserveConfig(explain=ExplainOptions(output_size="feature"))
    want = Explainer(model_dir, config=config).explain(digit_images, methods=list(methods), targets=TARGETS)
    for method in methods:
        maps = got[output_name(method)]
        assert maps.dtype == np.uint8 and maps.shape == (4, 3, 16, 16)
        expected = np.round(np.clip(want.maps[method], 0, 1) * 255)
        assert np.abs(maps.astype(np.int32) - expected).max() <= 1, method
        assert (maps == 255).any()


def test_issue_24_methods_in_the_maps_graph_equal_the_explainers(digits_dir, digit_images, tmp_path) -> None:
    """The new methods whose maps come from one explain run by graph operators: element-wise
    Grad-CAM, FEM, ShapleyCAM (GAP -> linear: Grad-CAM) and RefineCAM (one layer: Grad-CAM++)."""
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir.path, copy)
    methods = ("gradcamelementwise", "fem", "shapleycam", "refinecam")
    _assert_equal_to_explainer(
        add_maps_graph(copy, MapsOptions(methods=methods)), digit_images, TARGETS, "input"
    )
    reasons = {
        "eigengradcam": "eigendecomposition",
        "kpcacam": "eigendecomposition",
        "finercam": "comparison",
    }
    reasons |= {"sscam": "masked copies", "iscam": "masked copies"}
    for name, reason in reasons.items():
        with pytest.raises(InvalidArgumentError, match=reason):
            MapsOptions(methods=(name,)).check()


def test_cli_adds_the_maps_graph_and_refuses_what_it_cannot_hold(digits_dir, tmp_path, capsys) -> None:
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir.path, copy)
    assert (
        main(["export", "--from-model", str(copy), "--maps", "hirescam,gradcam", "--maps-size", "32x24"]) == 0
    )
    assert "maps_hirescam, maps_gradcam (float32 32x24)" in capsys.readouterr().out
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    assert manifest["maps"]["methods"] == ["hirescam", "gradcam"] and manifest["maps"]["size"] == [32, 24]
    assert ModelDirectory(copy).manifest.graphs["maps"].sha256 != digits_dir.manifest.graphs["maps"].sha256

    assert main(["export", "--from-model", str(copy), "--maps", "eigencam"]) == 2
    err = capsys.readouterr().err
    assert "'eigencam' cannot be in the maps graph" in err and "no operator" in err
    assert main(["export", "--from-model", str(copy), "--maps", "gradcam", "--maps-size", "big"]) == 2
    assert "maps_size" in capsys.readouterr().err
    assert json.loads((copy / MANIFEST_NAME).read_text()) == manifest  # nothing changed


def test_which_methods_the_graph_holds_and_why_not_the_others() -> None:
    assert set(ALL) <= set(graph_methods())
    reasons = {
        "eigencam": "eigendecomposition (or SVD), which ONNX has no operator for",
        "scorecam": "K masked copies",
        "ablationcam": "K ablated copies",
        "smoothgradcam++": "noisy copies",
        "guidedbackprop": "guided-backprop graph",
        "guidedgradcam": "guided-backprop graph",
    }
    for name, reason in reasons.items():
        with pytest.raises(InvalidArgumentError, match="cannot be in the maps graph") as refused:
            MapsOptions(methods=(name,)).check()
        assert reason in str(refused.value) and name not in graph_methods()
    with pytest.raises(InvalidArgumentError, match="unknown method 'gradcan'"):
        MapsOptions(methods=("gradcan",)).check()


def test_cam_needs_a_gap_linear_head(digits_dir, tmp_path) -> None:
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir.path, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["cam_weights"] = None  # as for a head that is not GAP -> linear
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedError, match="'cam' needs a head that is global average pooling"):
        add_maps_graph(copy, MapsOptions(methods=("gradcam", "cam")))
    with pytest.raises(InvalidArgumentError, match="maps_dtype"):
        MapsOptions(dtype="float16").check()


def test_verification_fails_a_graph_with_wrong_maths(digits_dir, tmp_path, monkeypatch) -> None:
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir.path, copy)
    before = sorted(p.name for p in copy.iterdir())
    # Grad-CAM written as Grad-CAM++: same shapes, other maps.
    monkeypatch.setattr(GradCAM, "graph_maps", GradCAMPlusPlus.graph_maps)
    with pytest.raises(ExportError, match="maps_gradcam: max error"):
        add_maps_graph(copy, MapsOptions(methods=("gradcam",)))
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing replaced, nothing left behind
    assert ModelDirectory(copy).manifest.maps == digits_dir.manifest.maps


@pytest.mark.slow
def test_resnet18_maps_equal_the_explainers(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", (3, 64, 64), 10)
    model_dir = export_model(
        model,
        "layer4",
        (3, 64, 64),
        tmp_path / "resnet18",
        name="resnet18",
        architecture="resnet18",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        graphs=("explain",),
        maps=MapsOptions(methods=ALL, output_size="feature"),
    )
    assert model_dir.manifest.maps is not None and model_dir.manifest.maps.size == [2, 2]
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    _assert_equal_to_explainer(model_dir, images, TARGETS, "feature")
    add_maps_graph(model_dir.path, MapsOptions(methods=ALL))  # input size: bilinear 2x2 -> 64x64
    _assert_equal_to_explainer(ModelDirectory(model_dir.path), images, TARGETS, "input")
