"""Targets as data (issue 21): exported explain graphs of every output kind, run with ONNX Runtime,
equal an independent eager autograd reference for every target kind.

The reference shares no code with camserve: a forward hook on the layer replaces its output by a
leaf, the scalar of each target is written out by hand (softmax(model(x))[c], (out[c] · mask).sum(),
cosine similarity, torchvision's box IoU) and ``torch.autograd.grad`` gives its gradient. Gradients
and target scores must agree to 1e-5 of their largest value. Exports are shared per module and small.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camserve.cli import main
from camserve.errors import ExportError, InvalidArgumentError
from camserve.export import export_model
from camserve.export.architectures import build_torchvision
from camserve.export.maps import MapsOptions
from camserve.methods.target_kinds import Target, TargetTable, build_table
from camserve.modeldir import MANIFEST_NAME, Manifest, ModelDirectory
from tests.export.nets import GreyNet, TinyDetector, TinyGapNet, TinySegmenter, TupleNet

TOLERANCE = 1e-5  # max |ONNX - reference| / max |reference|

Scalars = Callable[[object], torch.Tensor]  # the model's raw output -> the targets' scalars [N,T]


def _export(
    model: nn.Module, layer: str, size: tuple[int, int, int], out: Path, **kw: object
) -> ModelDirectory:
    kw.setdefault("graphs", ("explain",))
    return export_model(
        model,
        layer,
        size,
        out,
        name=out.name,
        architecture="test",
        mean=[0.0] * size[0],
        std=[1.0] * size[0],
        **kw,  # type: ignore[arg-type]
    )


def _run(
    model_dir: ModelDirectory, graph: str, images: torch.Tensor, table: TargetTable
) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_dir.graph_path(graph)), providers=["CPUExecutionProvider"])
    values = {"images": images, "targets": table.ids, "target_kinds": table.kinds, "target_data": table.data}
    feed = {i.name: values[i.name].numpy() for i in session.get_inputs()}  # type: ignore[union-attr]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def _reference(
    model: nn.Module, layer: str, images: torch.Tensor, scalars: Scalars
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A [N,K,h,w], ds/dA [N,T,K,h,w] and s [N,T]: the layer's output replaced by a leaf, one
    backward pass per target column (images are independent: the column's sum gives each image's)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        store["leaf"] = out.detach().clone().requires_grad_(True)
        return store["leaf"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            values = scalars(model(images))
    finally:
        handle.remove()
    leaf = store["leaf"]
    grads = torch.stack(
        [torch.autograd.grad(values[:, t].sum(), leaf, retain_graph=True)[0] for t in range(values.shape[1])],
        dim=1,
    )
    return leaf.detach(), grads, values.detach()


def _close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    scale = float(want.abs().max())
    assert scale > 0, f"{what}: the reference is all zeros"
    err = float(np.abs(got - want.numpy()).max()) / scale
    assert got.shape == tuple(want.shape) and err <= TOLERANCE, f"{what}: relative error {err:.2e}"


def _check(
    model_dir: ModelDirectory, model: nn.Module, images: torch.Tensor, table: TargetTable, scalars: Scalars
) -> dict[str, np.ndarray]:
    got = _run(model_dir, "explain", images, table)
    acts, grads, values = _reference(model.eval(), model_dir.manifest.target_layer, images, scalars)
    _close(got["activations"], acts, "activations")
    _close(got["target_scores"], values, "target_scores")
    _close(got["gradients"], grads, "gradients")
    return got


def _top(scores: torch.Tensor, rank: int) -> torch.Tensor:
    """Each image's rank-th best class (1: the best) of class scores [N,C]."""
    return scores.topk(rank, dim=1).indices[:, rank - 1]


# -- classification: logit, softmax probability, sigmoid (multi-label); 1-channel input ----------


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory) -> tuple[nn.Module, ModelDirectory]:
    torch.manual_seed(0)
    model = TinyGapNet(classes=5).eval()
    # every graph: forward and head must give the class scores, guided must take the target inputs
    graphs = ("explain", "forward", "head", "guided")
    return model, _export(model, "features", (3, 16, 16), tmp_path_factory.mktemp("t") / "ml", graphs=graphs)


def test_multilabel_classifier_logit_probability_sigmoid(multilabel) -> None:
    model, model_dir = multilabel
    manifest = ModelDirectory(model_dir.path).manifest
    assert manifest.output_kind == "classification" and manifest.output_shape == [5]
    assert manifest.explain_inputs == ["images", "targets", "target_kinds"]
    assert manifest.cam_weights is not None  # GAP -> linear: CAM's weights are probed for classifiers
    spec = manifest.target_spec()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    rows: list[list[int | Target]] = [
        [Target("sigmoid", 1), Target("probability", -1), 4, Target("sigmoid", -2)],
        [Target("logit", -2), Target("sigmoid", 0), Target("probability", 3), -1],
        [Target("probability", 2), 0, Target("sigmoid", -1), Target("logit", 4)],
    ]
    table = build_table(rows, spec, 3)
    assert table.data is None

    def scalars(logits: object) -> torch.Tensor:
        assert isinstance(logits, torch.Tensor)
        top1, top2 = _top(logits, 1), _top(logits, 2)
        p, s = torch.softmax(logits, dim=1), torch.sigmoid(logits)
        return torch.stack(
            [
                torch.stack([s[0, 1], p[0, top1[0]], logits[0, 4], s[0, top2[0]]]),
                torch.stack([logits[1, top2[1]], s[1, 0], p[1, 3], logits[1, top1[1]]]),
                torch.stack([p[2, 2], logits[2, 0], s[2, top1[2]], logits[2, 4]]),
            ]
        )

    got = _check(model_dir, model, images, table, scalars)
    with torch.no_grad():
        logits = model(images)
    np.testing.assert_allclose(got["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    assert got["target_ids"].tolist()[1] == [int(_top(logits, 2)[1]), 0, 3, int(_top(logits, 1)[1])]
    forward = _run(model_dir, "forward", images, table)["logits"]
    np.testing.assert_allclose(forward, logits.numpy(), rtol=1e-5, atol=1e-6)
    guided = _run(model_dir, "guided", images, table)["input_gradients"]
    assert guided.shape == (3, 4, 3, 16, 16) and np.abs(guided).max() > 0


def test_one_channel_non_square_classifier(tmp_path) -> None:
    torch.manual_seed(1)
    model = GreyNet(classes=4).eval()
    model_dir = _export(model, "features", (1, 20, 24), tmp_path / "grey")
    assert model_dir.manifest.input_size == [1, 20, 24]
    images = torch.randn(2, 1, 20, 24, generator=torch.Generator().manual_seed(5))
    table = build_table(
        [[Target("probability", 2), -1, Target("sigmoid", 3)]], model_dir.manifest.target_spec(), 2
    )

    def scalars(logits: object) -> torch.Tensor:
        assert isinstance(logits, torch.Tensor)
        p, top = torch.softmax(logits, dim=1), _top(logits, 1)
        n = torch.arange(2)
        return torch.stack([p[:, 2], logits[n, top], torch.sigmoid(logits[:, 3])], dim=1)

    _check(model_dir, model, images, table, scalars)


# -- dense: torchvision segmentation models (random weights, small input) -----------------------

SEGMENTATION_SIZE = 32


def _segmentation(arch: str, tmp_path: Path) -> tuple[nn.Module, ModelDirectory]:
    """``camserve export --arch`` (its defaults: layer, output "out", 21 VOC classes) and the same
    seeded random model built here for the reference."""
    s = SEGMENTATION_SIZE
    argv = ["export", "--arch", arch, "--random-weights", "--input-size", f"3x{s}x{s}", "--graphs", "explain"]
    assert main([*argv, "--out", str(tmp_path / arch)]) == 0
    model_dir = ModelDirectory(tmp_path / arch)
    assert model_dir.manifest.target_layer == {"fcn_resnet50": "backbone.layer4"}.get(arch, "backbone.16")
    assert model_dir.manifest.class_names[:2] == ["__background__", "aeroplane"]
    torch.manual_seed(0)  # as the CLI's --random-weights
    return build_torchvision(arch).eval(), model_dir


def _check_dense(model: nn.Module, model_dir: ModelDirectory) -> None:
    manifest = model_dir.manifest
    s = SEGMENTATION_SIZE
    assert manifest.output_kind == "dense" and manifest.output_shape == [21, s, s]
    assert manifest.outputs == ["out"] and manifest.output == "out" and manifest.cam_weights is None
    assert manifest.explain_inputs == ["images", "targets", "target_kinds", "target_data"]
    spec = manifest.target_spec()
    mask = torch.rand(s, s, generator=torch.Generator().manual_seed(6)) < 0.4
    box = (4.0, 8.0, 20.0, 30.0)
    rows: list[list[int | Target]] = [
        [
            Target("predicted_region", -1),
            Target("region", 3, mask=mask.numpy()),
            Target("region", -2, box=box),
        ],
        [Target("region", 7, mask=mask.numpy()), -1, Target("predicted_region", -2)],
    ]
    table = build_table(rows, spec, 2)
    images = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(7))
    box_mask = torch.zeros(s, s)
    box_mask[8:30, 4:20] = 1.0  # the cells (pixels here) whose centres lie inside the box

    def scalars(raw: object) -> torch.Tensor:
        assert isinstance(raw, dict)
        out = raw["out"]  # [N,C,H,W]
        mean = out.mean(dim=(2, 3))
        top1, top2 = _top(mean.detach(), 1), _top(mean.detach(), 2)
        label = out.detach().argmax(dim=1)  # [N,H,W]

        def region(n: int, c: int | torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return (out[n, int(c)] * m).sum()

        return torch.stack(
            [
                torch.stack(
                    [
                        region(0, top1[0], (label[0] == top1[0]).float()),
                        region(0, 3, mask.float()),
                        region(0, top2[0], box_mask),
                    ]
                ),
                torch.stack(
                    [
                        region(1, 7, mask.float()),
                        region(1, top1[1], (label[1] == top1[1]).float()),
                        region(1, top2[1], (label[1] == top2[1]).float()),
                    ]
                ),
            ]
        )

    got = _check(model_dir, model, images, table, scalars)
    assert got["target_scores"].shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_region_targets(arch: str, tmp_path) -> None:
    model, model_dir = _segmentation(arch, tmp_path)
    _check_dense(model, model_dir)


@pytest.mark.slow
def test_fcn_resnet50_region_targets(tmp_path) -> None:
    model, model_dir = _segmentation("fcn_resnet50", tmp_path)
    _check_dense(model, model_dir)


def test_tiny_segmenter_dense_output_by_name(tmp_path) -> None:
    """The fast dense check (the torchvision models above are slow): a dict output chosen by name."""
    torch.manual_seed(2)
    model = TinySegmenter().eval()
    maps = MapsOptions(methods=("gradcam", "layercam"), output_size="input")  # verified at export
    model_dir = _export(
        model, "body", (3, 12, 16), tmp_path / "seg", output="out", graphs=("explain", "forward"), maps=maps
    )
    manifest = model_dir.manifest
    assert (manifest.output_kind, manifest.output_shape, manifest.outputs) == (
        "dense",
        [3, 12, 16],
        ["aux", "out"],
    )
    mask = np.zeros((12, 16), np.float32)
    mask[2:9, 3:11] = 0.5  # weights, not only 0/1
    table = build_table(
        [
            [Target("region", 1, mask=mask), Target("predicted_region", -1)],
            [-2, Target("region", 0, box=(0, 0, 8, 6))],
        ],
        manifest.target_spec(),
        2,
    )
    images = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(8))
    box = torch.zeros(12, 16)
    box[:6, :8] = 1.0

    def scalars(raw: object) -> torch.Tensor:
        assert isinstance(raw, dict)
        out = raw["out"]
        mean = out.detach().mean(dim=(2, 3))
        label = out.detach().argmax(dim=1)
        t1, t2 = int(_top(mean, 1)[0]), int(_top(mean, 2)[1])
        m = torch.from_numpy(mask)
        first = [(out[0, 1] * m).sum(), (out[0, t1] * (label[0] == t1)).sum()]
        second = [(out[1, t2] * (label[1] == t2)).sum(), (out[1, 0] * box).sum()]
        return torch.stack([torch.stack(first), torch.stack(second)])

    got = _check(model_dir, model, images, table, scalars)
    with torch.no_grad():
        mean = model(images)["out"].mean(dim=(2, 3))
    # the maps graph takes the same inputs; its Grad-CAM is the explain graph's, by hand
    assert model_dir.manifest.maps is not None
    assert model_dir.manifest.maps.inputs == ["images", "targets", "target_kinds", "target_data"]
    gradcam = _run(model_dir, "maps", images, table)["maps_gradcam"]
    weights = got["gradients"].mean(axis=(3, 4), keepdims=True)
    cam = torch.from_numpy(np.maximum((weights * got["activations"][:, None]).sum(axis=2), 0))
    cam = F.interpolate(cam, size=(12, 16), mode="bilinear", align_corners=False).numpy()
    low, high = cam.min(axis=(2, 3), keepdims=True), cam.max(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(gradcam, (cam - low) / (high - low), atol=1e-4)
    np.testing.assert_allclose(_run(model_dir, "forward", images, table)["logits"], mean.numpy(), atol=1e-6)


# -- detection: a dense head's per-anchor scores and boxes, box targets matched by IoU ------------


def test_dense_detection_head_box_targets(tmp_path) -> None:
    torch.manual_seed(3)
    model = TinyDetector(classes=4, size=32).eval()
    model_dir = _export(
        model,
        "body",
        (3, 32, 32),
        tmp_path / "det",
        output="scores",
        output_kind="detection",
        boxes_output="boxes",
        graphs=("explain", "forward", "guided"),
    )
    manifest = model_dir.manifest
    assert (manifest.output_kind, manifest.output_shape, manifest.boxes_output) == (
        "detection",
        [16, 4],
        "boxes",
    )
    assert manifest.outputs == ["boxes", "scores"] and manifest.num_classes == 4
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        raw = model(images)
    # one box an anchor's own (IoU 1), one between anchors, one small (only the best anchor matches)
    own = tuple(float(v) for v in raw["boxes"][0, 5])
    rows: list[list[int | Target]] = [
        [
            Target("box", 2, box=own),
            Target("box", -1, box=(4.0, 4.0, 20.0, 18.0)),
            Target("box", 1, box=(30, 30, 32, 32)),
        ],
        [
            Target("box", -2, box=(10.0, 2.0, 26.0, 20.0)),
            Target("box", 3, box=own),
            Target("box", 0, box=(0, 0, 32, 32)),
        ],
    ]
    table = build_table(rows, manifest.target_spec(), 2)

    def scalars(out: object) -> torch.Tensor:
        assert isinstance(out, dict)
        scores, boxes = out["scores"], out["boxes"].detach()
        best = scores.detach().amax(dim=1)  # the class scores: each class's best anchor
        values = []
        for n, row in enumerate(rows):
            line = []
            for target in row:
                assert isinstance(target, Target) and target.box is not None
                c = target.class_id if target.class_id >= 0 else int(_top(best, -target.class_id)[n])
                iou = torchvision.ops.box_iou(boxes[n], torch.tensor([target.box]))[:, 0]
                matched = (iou >= 0.5) | (iou == iou.max())
                line.append((scores[n, :, c] * matched).sum())
            values.append(torch.stack(line))
        return torch.stack(values)

    got = _check(model_dir, model, images, table, scalars)
    assert got["logits"].shape == (2, 4)
    np.testing.assert_allclose(got["logits"], raw["scores"].amax(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    guided = _run(model_dir, "guided", images, table)["input_gradients"]
    assert guided.shape == (2, 3, 3, 32, 32) and np.abs(guided).max() > 0


# -- embedding: dot / cosine to a concept vector or to another image's embedding ------------------


@pytest.fixture(scope="module")
def embedding(tmp_path_factory) -> tuple[nn.Module, ModelDirectory]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    model.eval()
    out = tmp_path_factory.mktemp("emb") / "resnet18"
    return model, _export(model, "layer4", (3, 64, 64), out, output_kind="embedding")


def test_embedding_dot_cosine_and_other_images(embedding) -> None:
    model, model_dir = embedding
    manifest = model_dir.manifest
    assert (manifest.output_kind, manifest.output_shape, manifest.cam_weights) == ("embedding", [512], None)
    concept = torch.randn(512, generator=torch.Generator().manual_seed(10))
    rows: list[list[int | Target]] = [
        [
            Target("cosine", vector=concept.numpy()),
            Target("dot", vector=concept.numpy()),
            Target("cosine_image", image=1),
            Target("dot_image", image=2),
        ],
        [
            Target("dot_image", image=0),
            Target("cosine_image", image=1),
            Target("cosine", vector=-concept.numpy()),
            Target("dot", vector=concept.numpy()),
        ],
        [
            Target("cosine_image", image=0),
            Target("dot", vector=2 * concept.numpy()),
            Target("dot_image", image=2),
            Target("cosine", vector=concept.numpy()),
        ],
    ]
    table = build_table(rows, manifest.target_spec(), 3)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(11))

    def scalars(out: object) -> torch.Tensor:
        assert isinstance(out, torch.Tensor)
        other = out.detach()  # another image's embedding is a constant concept

        def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a * b).sum() / (a.norm() * b.norm())

        return torch.stack(
            [
                torch.stack(
                    [cos(out[0], concept), out[0] @ concept, cos(out[0], other[1]), out[0] @ other[2]]
                ),
                torch.stack(
                    [out[1] @ other[0], cos(out[1], other[1]), cos(out[1], -concept), out[1] @ concept]
                ),
                torch.stack(
                    [cos(out[2], other[0]), out[2] @ (2 * concept), out[2] @ other[2], cos(out[2], concept)]
                ),
            ]
        )

    got = _check(model_dir, model, images, table, scalars)
    assert got["target_ids"].tolist() == [
        [0, 0, 1, 2],
        [0, 1, 0, 0],
        [0, 0, 2, 0],
    ]  # image indices, never < 0


# -- choosing the output; bad choices; manifests from before target kinds -----------------------


def test_tuple_output_by_index(tmp_path) -> None:
    torch.manual_seed(4)
    model = TupleNet().eval()
    model_dir = _export(model, "features", (3, 8, 8), tmp_path / "tuple", output=1)
    manifest = model_dir.manifest
    assert (manifest.outputs, manifest.output, manifest.output_shape) == (["0", "1"], "1", [3])
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    table = build_table([[Target("probability", 2), 0]], manifest.target_spec(), 2)

    def scalars(out: object) -> torch.Tensor:
        assert isinstance(out, tuple)
        logits = out[1]
        return torch.stack([torch.softmax(logits, dim=1)[:, 2], logits[:, 0]], dim=1)

    _check(model_dir, model, images, table, scalars)


def test_bad_output_choices_are_refused(tmp_path) -> None:
    seg, det = TinySegmenter(), TinyDetector(classes=3)
    with pytest.raises(
        InvalidArgumentError, match="output: the model has no output 'logits'; its outputs: aux, out"
    ):
        _export(seg, "body", (3, 8, 8), tmp_path / "a", output="logits")
    with pytest.raises(
        InvalidArgumentError, match="output: index 5 is out of range: the model has 2 outputs"
    ):
        _export(seg, "body", (3, 8, 8), tmp_path / "a", output=5)
    with pytest.raises(
        InvalidArgumentError, match="output_kind: 'segmentation' is not one of classification"
    ):
        _export(seg, "body", (3, 8, 8), tmp_path / "a", output="out", output_kind="segmentation")
    with pytest.raises(
        ExportError,
        match="an output of kind embedding must be 2-D; the explained output is a tensor of shape",
    ):
        _export(seg, "body", (3, 8, 8), tmp_path / "a", output="out", output_kind="embedding")
    with pytest.raises(InvalidArgumentError, match="boxes_output: a detection output"):
        _export(det, "body", (3, 32, 32), tmp_path / "a", output="scores", output_kind="detection")
    with pytest.raises(ExportError, match="give output_kind"):
        _export(det, "body", (3, 32, 32), tmp_path / "a", output="scores")
    with pytest.raises(ExportError, match=r"boxes_output must be boxes \[N,A,4\]"):
        _export(
            det,
            "body",
            (3, 32, 32),
            tmp_path / "a",
            output="scores",
            output_kind="detection",
            boxes_output="scores",
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--output-kind", "segmentation"],
            "--output-kind: 'segmentation' is not one of classification, dense",
        ),
        (["--output-kind", "detection"], "--boxes-output: --output-kind detection needs --boxes-output"),
        (["--output", "nope"], "output: the model returns one tensor, it has no output 'nope'"),
    ],
)
def test_cli_output_flags_fail_in_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    base = ["export", "--module", "tests.export.nets:build_tiny", "--layer", "features", "--random-weights"]
    code = main([*base, "--input-size", "3x16x16", "--out", str(tmp_path / "m"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_cli_exports_a_detection_head(tmp_path, capsys) -> None:
    argv = [
        "export",
        "--module",
        "tests.export.nets:build_tiny_detector",
        "--layer",
        "body",
        "--random-weights",
    ]
    argv += [
        "--input-size",
        "3x32x32",
        "--output",
        "scores",
        "--output-kind",
        "detection",
        "--boxes-output",
        "boxes",
    ]
    argv += ["--graphs", "explain", "--out", str(tmp_path / "det")]
    assert main(argv) == 0, capsys.readouterr().err
    assert "detection output [N,16,4] (targets: box)" in capsys.readouterr().out
    manifest = ModelDirectory(tmp_path / "det").manifest
    assert (manifest.output, manifest.boxes_output, manifest.output_shape) == ("scores", "boxes", [16, 4])
    assert manifest.explain_inputs == ["images", "targets", "target_kinds", "target_data"]


def test_a_manifest_from_before_target_kinds_reads_as_a_classifier(multilabel, tmp_path) -> None:
    _model, model_dir = multilabel
    data = json.loads((model_dir.path / MANIFEST_NAME).read_text())
    for key in ("output_kind", "output_shape", "explain_inputs", "outputs", "output", "boxes_output"):
        del data[key]
    old = Manifest.from_dict(data)
    assert (old.output_kind, old.output_shape, old.explain_inputs) == (
        "classification",
        [5],
        ["images", "targets"],
    )
    spec = old.target_spec()
    assert (spec.output_kind, spec.num_classes, spec.output_shape, spec.input_size) == (
        "classification",
        5,
        (5,),
        (16, 16),
    )
    assert spec.kinds == ("logit", "probability", "sigmoid") and spec.data_length == 0
    data["output_kind"] = "segmentation"
    with pytest.raises(InvalidArgumentError, match="manifest: output_kind 'segmentation' is not one of"):
        Manifest.from_dict(data)
