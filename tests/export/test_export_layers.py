"""Several target layers per model (issue 21 item 4): one explain run gives every layer's activations
and gradients, and the methods fuse the layers' maps as the anchors do.

A tiny CNN with two stages ("2": 6 channels at 16x16, "3": 8 channels at 8x8) is exported once for
the module with the layers ["3", "2"] (the primary one runs last, so the graph repeats at "2"). The
gradients are checked against an independent eager reference (a hook replaces one layer's output by a
leaf, the scalar is written by hand), the fused maps against pytorch-grad-cam (GradCAM, RefineCAM with
``target_layers=[l1, l2]``) and torchcam (LayerCAM + ``fuse_cams``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from camserve import Explainer
from camserve.cli import main
from camserve.config import ExplainOptions
from camserve.errors import ExportError, InvalidArgumentError
from camserve.export import export_model
from camserve.export.eager import TorchGraphRunner
from camserve.export.maps import MapsOptions
from camserve.methods.target_kinds import Target, build_table
from camserve.modeldir import MANIFEST_NAME, Manifest, ModelDirectory
from camserve.runtime import OnnxGraphRunner
from tests.export.nets import ResidualNet

SIZE = (3, 16, 16)
LAYERS = ["3", "2"]  # primary "3" (8x8), then "2" (16x16), which runs first
GRADIENT_TOLERANCE = 1e-5  # max |error| / max |reference|
MAP_TOLERANCE = 2e-3  # max abs, normalised maps


def two_stage_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),  # "2": 6 x 16 x 16
        nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()),  # "3": 8 x 8 x 8
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def _export(model: nn.Module, layers: object, out: Path, **kw: object) -> ModelDirectory:
    kw.setdefault("graphs", ("explain", "forward", "head"))
    return export_model(
        model,
        layers,  # type: ignore[arg-type]
        SIZE,
        out,
        name=out.name,
        architecture="test",
        mean=[0.0] * 3,
        std=[1.0] * 3,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return two_stage_net()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, model: nn.Module) -> ModelDirectory:
    return _export(model, LAYERS, tmp_path_factory.mktemp("layers") / "two")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, *SIZE, generator=generator) * 0.6 - 0.3
    for n, (top, left) in enumerate([(2, 3), (8, 8), (1, 10)]):
        x[n, :, top : top + 5, left : left + 5] += 1.5
    return x


def reference_gradient(
    model: nn.Module, layer: str, image: torch.Tensor, scalar: str, class_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, dy/dA) of one image at ``layer``, y the logit or the softmax probability of ``class_id``."""
    module = dict(model.named_modules())[layer]
    leaf: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf["a"] = output.detach().requires_grad_(True)
        return leaf["a"]

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(image.unsqueeze(0))[0]
            y = logits[class_id] if scalar == "logit" else torch.softmax(logits, dim=0)[class_id]
            (grad,) = torch.autograd.grad(y, leaf["a"])
    finally:
        handle.remove()
    return leaf["a"][0].detach(), grad[0]


def test_manifest_lists_every_layer_and_the_explain_graph_its_outputs(model_dir: ModelDirectory) -> None:
    manifest = model_dir.manifest
    assert manifest.target_layer == "3" and manifest.target_layers == ["3", "2"]
    assert manifest.activation_shape == [8, 8, 8]
    assert manifest.activation_shapes == [[8, 8, 8], [6, 16, 16]]
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir.graph_path("explain")), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == [
        "logits", "activations", "gradients", "target_ids", "target_scores", "activations_1", "gradients_1"
    ]  # fmt: skip


def test_old_manifests_have_one_layer() -> None:
    data = json.loads(
        Manifest(
            name="m", architecture="a", target_layer="x", input_size=[3, 4, 4], mean=[0.0] * 3, std=[1.0] * 3,
            class_names=["a"], activation_shape=[2, 2, 2], layout="nchw",
        ).to_json()
    )  # fmt: skip
    del data["target_layers"], data["activation_shapes"]
    old = Manifest.from_dict(data)
    assert old.target_layers == ["x"] and old.activation_shapes == [[2, 2, 2]]


@pytest.mark.parametrize("kind", ["logit", "probability"])
def test_every_layers_gradients_equal_eager_autograd(
    model_dir: ModelDirectory, model: nn.Module, images: torch.Tensor, kind: str
) -> None:
    """ONNX Runtime's one explain run and the eager runner both give each layer's dy/dA_l."""
    classes = [[0, 2], [1, 3], [3, 0]]
    table = build_table(
        [[Target(kind, c) for c in row] for row in classes], model_dir.manifest.target_spec(), 3
    )
    onnx_out = OnnxGraphRunner(model_dir).explain(images, table)
    eager_out = TorchGraphRunner(model, LAYERS, SIZE).explain(images, table)
    for out in (onnx_out, eager_out):
        assert len(out.layers) == 1
        per_layer = [(out.activations, out.gradients), out.layers[0]]
        for layer, (acts, grads) in zip(LAYERS, per_layer, strict=True):
            for n, row in enumerate(classes):
                for t, c in enumerate(row):
                    want_a, want_g = reference_gradient(model, layer, images[n], kind, c)
                    assert float((acts[n] - want_a).abs().max()) <= 1e-5 * float(want_a.abs().max())
                    err = float((grads[n, t] - want_g).abs().max()) / float(want_g.abs().max())
                    assert err <= GRADIENT_TOLERANCE, (layer, n, t, err)


def test_the_primary_layer_may_run_first(model: nn.Module, images: torch.Tensor) -> None:
    """["2", "3"]: the repetition is at the primary layer, "3" is an intermediate of the copies."""
    out = TorchGraphRunner(model, ["2", "3"], SIZE).explain(images, torch.tensor([[1], [2], [0]]))
    for layer, (acts, grads) in zip(
        ["2", "3"], [(out.activations, out.gradients), out.layers[0]], strict=True
    ):
        for n, c in enumerate([1, 2, 0]):
            want_a, want_g = reference_gradient(model, layer, images[n], "logit", c)
            assert acts.shape[1:] == want_a.shape
            assert float((grads[n, 0] - want_g).abs().max()) <= GRADIENT_TOLERANCE * float(want_g.abs().max())


@pytest.fixture(scope="module")
def explainer(model_dir: ModelDirectory) -> Explainer:
    return Explainer(model_dir)


def _maps(explainer: Explainer, images: torch.Tensor, method: str, classes: list[int], **options: object):
    result = explainer.explain(
        images, methods=[method], targets=[[c] for c in classes], options=ExplainOptions(**options)
    )
    return result.maps[method][:, 0]


CLASSES = [0, 1, 2]


def test_one_explain_run_serves_every_layer_and_method(explainer: Explainer, images: torch.Tensor) -> None:
    runner = explainer.runner
    calls: list[int] = []
    original = runner.explain

    def counted(batch, targets):  # type: ignore[no-untyped-def]
        calls.append(batch.shape[0])
        return original(batch, targets)

    runner.explain = counted  # type: ignore[method-assign]
    try:
        result = explainer.explain(
            images, methods=["gradcam", "layercam", "refinecam", "hirescam"], targets=1
        )
    finally:
        del runner.explain
    assert calls == [3]
    assert all(result.maps[m].shape == (3, 1, 16, 16) for m in ("gradcam", "layercam", "refinecam"))


def test_fused_gradcam_equals_pytorch_grad_cam_with_two_target_layers(
    explainer: Explainer, model: nn.Module, images: torch.Tensor
) -> None:
    cam_module = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = _maps(explainer, images, "gradcam", CLASSES)
    with cam_module.GradCAM(model, [model[3], model[2]]) as cam:
        theirs = cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES])
    assert ours.shape == theirs.shape == (3, 16, 16)
    assert float(np.abs(ours - theirs).max()) <= MAP_TOLERANCE
    # both layers count: the primary layer's map alone is another map
    with cam_module.GradCAM(model, [model[3]]) as cam:
        primary = cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES])
    assert float(np.abs(ours - primary).max()) > 0.05


def test_fused_refinecam_equals_pytorch_grad_cam_refinecam(
    explainer: Explainer, model: nn.Module, images: torch.Tensor
) -> None:
    cam_module = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.methods.test_methods_anchors import PaperGradCAMPlusPlus

    ours = _maps(explainer, images, "refinecam", CLASSES)
    cam = cam_module.RefineCAM(model, [model[3], model[2]], base_method=PaperGradCAMPlusPlus)
    theirs = cam(images.clone(), [ClassifierOutputTarget(c) for c in CLASSES])
    assert float(np.abs(ours - theirs).max()) <= MAP_TOLERANCE


def test_fused_layercam_equals_torchcam_fuse_cams(
    explainer: Explainer, model: nn.Module, images: torch.Tensor
) -> None:
    methods = pytest.importorskip("torchcam.methods")
    ours = _maps(explainer, images, "layercam", CLASSES, output_size="16x16")
    theirs = []
    for n, c in enumerate(CLASSES):
        with methods.LayerCAM(model, target_layer=["3", "2"], input_shape=SIZE) as extractor:
            scores = model(images[n : n + 1])
            cams = extractor(c, scores)
            fused = extractor.fuse_cams(cams)[0].detach()
        low, high = fused.min(), fused.max()
        theirs.append(((fused - low) / (high - low)).numpy())
    assert float(np.abs(ours - np.stack(theirs)).max()) <= MAP_TOLERANCE


def test_methods_on_the_primary_layer_alone_are_unchanged(
    explainer: Explainer, model: nn.Module, images: torch.Tensor
) -> None:
    """Ablation-CAM and Score-CAM re-run the head / forward graphs, which hold the primary layer:
    their maps are those of the primary layer alone (a single-layer eager runner)."""
    single = Explainer(explainer.model_dir, runner=TorchGraphRunner(model, "3", SIZE))
    for method in ("ablationcam", "scorecam"):
        ours, alone = _maps(explainer, images, method, CLASSES), _maps(single, images, method, CLASSES)
        assert float(np.abs(ours - alone).max()) <= 1e-4


def test_several_layers_must_all_be_cuts(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="'inner' is not a cut"):
        _export(ResidualNet(), ["stem", "inner"], tmp_path / "x", graphs=("explain",))
    with pytest.raises(InvalidArgumentError, match="distinct"):
        _export(two_stage_net(), ["3", "3"], tmp_path / "y", graphs=("explain",))
    with pytest.raises(InvalidArgumentError, match="maps"):
        _export(
            two_stage_net(),
            LAYERS,
            tmp_path / "z",
            graphs=("explain",),
            maps=MapsOptions(methods=["gradcam"]),
        )
    assert not list(tmp_path.iterdir())


def test_cli_takes_a_comma_list_of_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        ["export", "--module", "tests.export.test_export_layers:two_stage_net", "--random-weights",
         "--layer", "3,2", "--input-size", "3x16x16", "--graphs", "explain", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert json.loads((out / MANIFEST_NAME).read_text())["target_layers"] == ["3", "2"]
    assert "layer 3, 2" in capsys.readouterr().out
    assert main(["export", "--module", "tests.export.test_export_layers:two_stage_net", "--random-weights",
                 "--layer", "3,", "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "--layer" in capsys.readouterr().err
