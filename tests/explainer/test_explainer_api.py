"""camserve.Explainer on a real exported model directory (ONNX Runtime graphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import camserve
from camserve.config import CamserveConfig, ExplainOptions
from camserve.errors import InvalidArgumentError, NotFoundError, UnsupportedError
from camserve.export.eager import TorchGraphRunner
from camserve.methods import known_methods
from tests.explainer.tiny_model import CLASS_NAMES, INPUT_SIZE, MEAN, STD

CONFIG = CamserveConfig(explain=ExplainOptions(smooth_n=2, topk_predictions=3))
ALL_BUT_SLOW = [m for m in known_methods() if m not in ("scorecam", "ablationcam")]


@pytest.fixture(scope="module")
def explainer(tiny_model_dir):
    return camserve.Explainer(tiny_model_dir, config=CONFIG)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUT_SIZE, generator=generator)


def test_result_holds_maps_logits_targets_and_predictions(explainer, tiny_model):
    images = random_images(3)
    result = explainer.explain(images, methods=known_methods(), targets=[[-1, 2]])
    assert result.methods == known_methods()
    for method in known_methods():
        maps = result.maps[method]
        assert maps.dtype == np.float32 and maps.shape == (3, 2, 16, 16), method
        assert maps.min() >= 0.0 and maps.max() <= 1.0, method
    expected_logits = tiny_model(images).detach().numpy()
    np.testing.assert_allclose(result.logits, expected_logits, rtol=1e-4, atol=1e-5)
    assert result.target_ids[:, 0].tolist() == expected_logits.argmax(axis=1).tolist()
    assert result.target_ids[:, 1].tolist() == [2, 2, 2]
    probabilities = torch.softmax(torch.from_numpy(expected_logits), dim=1)
    for n, predictions in enumerate(result.predictions):
        assert len(predictions) == 3  # topk_predictions
        assert [p.class_id for p in predictions] == probabilities[n].argsort(descending=True)[:3].tolist()
        assert predictions[0].name == CLASS_NAMES[predictions[0].class_id]
        assert predictions[0].probability == pytest.approx(float(probabilities[n].max()), rel=1e-4)
    np.testing.assert_array_equal(result.images, images.numpy())


def test_onnx_graphs_give_the_maps_of_eager_pytorch(explainer, tiny_model, tiny_model_dir):
    eager = camserve.Explainer(
        tiny_model_dir, config=CONFIG, runner=TorchGraphRunner(tiny_model, "3", INPUT_SIZE)
    )
    images = random_images(2, seed=1)
    onnx_result = explainer.explain(images, methods=known_methods(), targets=[[-1], [1]])
    eager_result = eager.explain(images, methods=known_methods(), targets=[[-1], [1]])
    for method in known_methods():
        np.testing.assert_allclose(
            onnx_result.maps[method], eager_result.maps[method], atol=1e-4, err_msg=method
        )


def test_the_same_picture_in_every_accepted_form_gives_the_same_input(explainer, png_file):
    pixels = np.asarray(Image.open(png_file).convert("RGB"))
    forms = [
        str(png_file),
        png_file,
        Image.open(png_file),
        pixels,
        torch.from_numpy(pixels.copy()),
    ]
    batches = [explainer.preprocess(form) for form in forms]
    for batch in batches[1:]:
        assert torch.equal(batch, batches[0])
    mixed = explainer.preprocess([png_file, batches[0], pixels[None]])  # list: concatenated in order
    assert mixed.shape == (3, *INPUT_SIZE)
    assert torch.equal(mixed[1], batches[0][0])
    result = explainer.explain([png_file, batches[0]], methods="gradcam")
    np.testing.assert_array_equal(result.maps["gradcam"][0], result.maps["gradcam"][1])


def test_preprocessing_follows_the_manifest(explainer):
    # A 32x32 image of one colour resizes to 16x16 of that colour; then /255, (x - mean) / std.
    rgb = np.array([51, 102, 204], dtype=np.uint8)
    image = np.broadcast_to(rgb, (32, 32, 3)).copy()
    batch = explainer.preprocess(image)
    expected = (torch.tensor(rgb / 255.0) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(batch[0].mean(dim=(1, 2)), expected.float(), atol=1e-6)
    assert torch.allclose(batch[0].amax(dim=(1, 2)), batch[0].amin(dim=(1, 2)))


def test_targets_default_to_each_prediction(explainer):
    images = random_images(2, seed=2)
    default = explainer.explain(images, methods=["gradcam"])
    explicit = explainer.explain(images, methods=["gradcam"], targets=[[-1]])
    assert default.target_ids.shape == (2, 1)
    np.testing.assert_array_equal(default.target_ids, explicit.target_ids)
    np.testing.assert_array_equal(default.maps["gradcam"], explicit.maps["gradcam"])


def test_options_come_from_config_unless_given(tiny_model_dir):
    feature = CamserveConfig(explain=ExplainOptions(output_size="feature"))
    explainer = camserve.Explainer(tiny_model_dir, config=feature)
    images = random_images(1)
    assert explainer.explain(images, methods="gradcam").maps["gradcam"].shape == (1, 1, 8, 8)
    given = explainer.explain(images, methods="gradcam", options=ExplainOptions(output_size="5x6"))
    assert given.maps["gradcam"].shape == (1, 1, 5, 6)
    raw = explainer.explain(images, methods="gradcam", options=ExplainOptions(normalize=False)).maps[
        "gradcam"
    ]
    normalised = explainer.explain(images, methods="gradcam", options=ExplainOptions()).maps["gradcam"]
    assert raw.max() != pytest.approx(1.0)  # not min-max scaled ...
    np.testing.assert_allclose(
        normalised, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-5
    )  # ... else equal


def test_supported_methods_follow_the_model_directory(explainer, tiny_model_dir, bare_model_dir):
    assert explainer.supported_methods == known_methods()
    bare = camserve.Explainer(bare_model_dir, config=CONFIG)
    assert "cam" not in bare.supported_methods
    assert "guidedbackprop" not in bare.supported_methods and "guidedgradcam" not in bare.supported_methods
    assert "fullgrad" not in bare.supported_methods
    assert "gradcam" in bare.supported_methods and "scorecam" in bare.supported_methods
    with pytest.raises(UnsupportedError, match="not global average pooling followed by one linear layer"):
        bare.explain(random_images(1), methods=["gradcam", "cam"])
    with pytest.raises(UnsupportedError, match="without a guided-backprop graph"):
        bare.explain(random_images(1), methods=["guidedgradcam"])
    with pytest.raises(UnsupportedError, match=r"without a fullgradient graph \(camserve export --graphs"):
        bare.explain(random_images(1), methods=["fullgrad"])


def test_save_npz_writes_every_array_atomically(explainer, tmp_path):
    result = explainer.explain(random_images(2), methods=["gradcam", "guidedbackprop"], targets=[[0, -1]])
    path = result.save_npz(tmp_path / "result.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]  # no temporary file left
    with np.load(path) as data:
        assert data["gradcam"].shape == (2, 2, 16, 16)
        assert data["guidedbackprop_rgb"].shape == (2, 2, 3, 16, 16)
        np.testing.assert_array_equal(data["logits"], result.logits)
        np.testing.assert_array_equal(data["target_ids"], result.target_ids)
        assert data["class_names"].tolist() == CLASS_NAMES


def test_a_failed_save_leaves_no_file(explainer, tmp_path, monkeypatch):
    result = explainer.explain(random_images(1), methods=["gradcam"])

    def failing_savez(fh, **arrays):
        fh.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr("camserve.result.np.savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        result.save_npz(tmp_path / "result.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_npz_into_a_missing_directory_names_the_argument(explainer, tmp_path):
    result = explainer.explain(random_images(1), methods=["gradcam"])
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        result.save_npz(tmp_path / "missing" / "result.npz")


def test_bad_requests_fail_before_running_anything(explainer):
    images = random_images(2)
    with pytest.raises(InvalidArgumentError, match="unknown method 'gradkam'; known: cam, ") as info:
        explainer.explain(images, methods=["gradkam"])
    assert info.value.argument == "methods"
    with pytest.raises(InvalidArgumentError, match="class 4 is out of range: the model has 4 classes"):
        explainer.explain(images, methods=["gradcam"], targets=[[4]])
    with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
        explainer.explain(torch.full((1, *INPUT_SIZE), float("nan")), methods=["gradcam"])


def test_model_argument(tmp_path):
    with pytest.raises(NotFoundError, match="no manifest.json"):
        camserve.Explainer(tmp_path, config=CONFIG)
    with pytest.raises(InvalidArgumentError, match="model"):
        camserve.Explainer(42, config=CONFIG)
