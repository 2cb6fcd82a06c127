"""The Explainer on exported graphs with target kinds: ONNX Runtime against the eager runner (the same
functions traced) for a classifier's probability / sigmoid targets, a tiny segmenter's regions and a
tiny embedding model's similarities; target scores against the hand-written scalars; and the CLI's
target errors on models that take masks, boxes and vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camserve
from camserve.cli import main
from camserve.config import CamserveConfig, RuntimeConfig
from camserve.errors import UnsupportedError
from camserve.export import export_model
from camserve.export.eager import TorchGraphRunner
from camserve.methods.target_kinds import Target
from tests.explainer.tiny_model import INPUT_SIZE, MEAN, STD
from tests.export.nets import TinyDetector

CONFIG = CamserveConfig(runtime=RuntimeConfig(kernels="torch"))
GRADIENT_METHODS = ["gradcam", "gradcam++", "layercam", "hirescam", "guidedbackprop"]


def tiny_segmenter() -> nn.Module:
    """3x16x16 -> 3 classes on an 8x8 grid; target layer "3"."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 3, 1),
    ).eval()


def tiny_embedder() -> nn.Module:
    """3x16x16 -> a 5-dimensional embedding; target layer "3"."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def _export(model: nn.Module, path, name: str, layer: str = "3", input_size=INPUT_SIZE, **kwargs):
    return export_model(
        model,
        layer,
        input_size,
        path,
        name=name,
        architecture=f"module:tests.explainer.x:{name}",
        mean=MEAN,
        std=STD,
        verify=False,
        graphs=("explain",),  # what these tests run (class scores: the explain graph's)
        **kwargs,
    )


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory):
    return _export(
        tiny_segmenter(), tmp_path_factory.mktemp("models") / "seg", "seg", class_names=["a", "b", "c"]
    )


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    return _export(tiny_embedder(), tmp_path_factory.mktemp("models") / "emb", "emb", output_kind="embedding")


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, *INPUT_SIZE, generator=torch.Generator().manual_seed(5))


def both(
    model_dir, model: nn.Module, layer: str = "3", input_size=INPUT_SIZE, **split
) -> tuple[camserve.Explainer, camserve.Explainer]:
    """The Explainer on ONNX Runtime and on the eager runner of the same model."""
    onnx = camserve.Explainer(model_dir, config=CONFIG)
    runner = TorchGraphRunner(model, layer, input_size, **split)
    return onnx, camserve.Explainer(model_dir, config=CONFIG, runner=runner)


def same(a: camserve.result.ExplainResult, b: camserve.result.ExplainResult) -> None:
    for method in a.maps:
        # float32 ONNX vs eager rounding, magnified by the min-max normalisation of small maps
        np.testing.assert_allclose(a.maps[method], b.maps[method], atol=1e-4, err_msg=method)
    np.testing.assert_allclose(a.target_scores, b.target_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.target_ids, b.target_ids)
    assert a.target_kinds.tolist() == b.target_kinds.tolist()


def test_classifier_probability_and_sigmoid_targets_onnx_equal_eager(tiny_model_dir, tiny_model):
    onnx, eager = both(tiny_model_dir, tiny_model)
    targets = [[Target("probability", -1), Target("sigmoid", 2), 1]]
    got = onnx.explain(images(), GRADIENT_METHODS, targets=targets)
    same(got, eager.explain(images(), GRADIENT_METHODS, targets=targets))
    logits = torch.from_numpy(got.logits)
    want = torch.stack([torch.softmax(logits, 1).amax(1), torch.sigmoid(logits[:, 2]), logits[:, 1]], dim=1)
    np.testing.assert_allclose(got.target_scores, want.numpy(), rtol=1e-5)
    assert got.target_kinds.tolist() == [["probability", "sigmoid", "logit"]] * 2


def test_dense_region_targets_onnx_equal_eager_and_the_hand_written_sums(segmenter_dir):
    model = tiny_segmenter()
    onnx, eager = both(segmenter_dir, model)
    assert onnx.target_spec.kinds == ("predicted_region", "region")
    mask = np.zeros((8, 8), dtype=np.float32)
    mask[2:5, 1:7] = 1.0
    targets = [
        [Target("predicted_region", 1), Target("region", 2, mask=mask), Target("region", 0, box=(0, 0, 8, 4))]
    ]
    got = onnx.explain(images(), ["gradcam", "layercam"], targets=targets)
    same(got, eager.explain(images(), ["gradcam", "layercam"], targets=targets))
    with torch.no_grad():
        out = model(images())
    box = np.zeros((8, 8), dtype=np.float32)
    box[:2, :4] = 1.0  # cells whose centres lie in x < 8, y < 4 of the 16x16 input
    want = torch.stack(
        [
            (out[:, 1] * (out.argmax(1) == 1)).sum((1, 2)),
            (out[:, 2] * torch.from_numpy(mask)).sum((1, 2)),
            (out[:, 0] * torch.from_numpy(box)).sum((1, 2)),
        ],
        dim=1,
    )
    np.testing.assert_allclose(got.target_scores, want.numpy(), rtol=1e-5, atol=1e-5)
    assert "scorecam" not in onnx.supported_methods
    with pytest.raises(UnsupportedError, match="'scorecam'.*class logits only"):
        onnx.explain(images(1), ["scorecam"])


def test_embedding_targets_onnx_equal_eager_and_the_hand_written_similarities(embedder_dir):
    model = tiny_embedder()
    onnx, eager = both(embedder_dir, model, output_kind="embedding")
    concept = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    rows = [
        [Target("cosine", vector=concept), Target("dot_image", image=1)],
        [Target("dot", vector=concept), Target("cosine_image", image=0)],
    ]
    got = onnx.explain(images(), ["gradcam", "gradcam++"], targets=rows)
    same(got, eager.explain(images(), ["gradcam", "gradcam++"], targets=rows))
    with torch.no_grad():
        e = model(images()).double()
    v = torch.from_numpy(concept).double()
    cos = torch.nn.functional.cosine_similarity
    want = [[cos(e[0], v, dim=0), e[0] @ e[1]], [e[1] @ v, cos(e[1], e[0], dim=0)]]
    np.testing.assert_allclose(got.target_scores, torch.tensor(want).numpy(), rtol=1e-5, atol=1e-6)
    assert got.target_ids.tolist() == [[0, 1], [0, 0]]


def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_detection_box_targets_onnx_equal_eager_and_the_matched_anchors_by_hand(tmp_path):
    torch.manual_seed(3)
    model = TinyDetector(classes=4, size=32).eval()
    split = {"output": "scores", "output_kind": "detection", "boxes_output": "boxes"}
    model_dir = _export(model, tmp_path / "det", "det", "body", (3, 32, 32), **split)
    onnx, eager = both(model_dir, model, layer="body", input_size=(3, 32, 32), **split)
    batch = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    boxes = [(0.0, 0.0, 16.0, 16.0), (8.0, 8.0, 30.0, 20.0)]
    targets = [[Target("box", 1, box=boxes[0]), Target("box", 3, box=boxes[1])]]
    got = onnx.explain(batch, ["gradcam", "layercam"], targets=targets)
    same(got, eager.explain(batch, ["gradcam", "layercam"], targets=targets))
    with torch.no_grad():
        out = model(batch)
    for n in range(2):
        for t, (box, c) in enumerate(zip(boxes, (1, 3), strict=True)):
            ious = [_iou(anchor, list(box)) for anchor in out["boxes"][n].tolist()]
            matched = [a for a, iou in enumerate(ious) if iou >= 0.5 or iou == max(ious)]
            want = float(sum(out["scores"][n, a, c] for a in matched))
            assert got.target_scores[n, t] == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert got.target_kinds.tolist() == [["box", "box"]] * 2


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_targets_on_dense_and_embedding_models(segmenter_dir, embedder_dir, tmp_path, capsys):
    batch = tmp_path / "x.npy"
    np.save(batch, images().numpy())
    seg = ["explain", "--model", str(segmenter_dir.path), "--method", "gradcam", str(batch)]
    out = tmp_path / "r.npz"
    assert (
        main([*seg, "--target", "predicted_region:-1", "--target", "region:2:box=0,0,8,4", "--out", str(out)])
        == 0
    )
    with np.load(out) as data:
        assert data["target_kinds"].tolist() == [["predicted_region", "region"]] * 2
    assert main([*seg, "--target", "region:2:box=0,0,17,4"]) == 2
    assert (
        "--target region:2:box=0,0,17,4: box: (0, 0, 17, 4) is not a box inside the 16x16 input"
        in _one_line(capsys)
    )
    np.save(tmp_path / "m.npy", np.ones((4, 4), dtype=np.float32))
    assert main([*seg, "--target", f"region:1:mask={tmp_path / 'm.npy'}"]) == 2
    assert "mask: is 4x4; the model's dense output is 8x8" in _one_line(capsys)
    assert main([*seg, "--target", "probability:1"]) == 2
    assert "kind: a model with a dense output takes targets of kind predicted_region, region" in _one_line(
        capsys
    )
    np.save(tmp_path / "v.npy", np.ones(3, dtype=np.float32))
    emb = ["explain", "--model", str(embedder_dir.path), "--method", "gradcam", str(batch)]
    assert main([*emb, "--target", f"cosine:vector={tmp_path / 'v.npy'}"]) == 2
    assert "vector: has shape [3]; the model's embedding has 5 dimensions" in _one_line(capsys)
    assert main([*emb, "--target", "cosine_image:image=2"]) == 2
    assert "image: expected the index of an image of the batch in [0, 1], got 2" in _one_line(capsys)
