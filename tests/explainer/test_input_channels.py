"""Models of 1, 4 and 5 input channels, non-square inputs (issue 21, item 5): exported with
``export_model``, Grad-CAM and Layer-CAM equal to PyTorch autograd, greyscale / RGB / RGBA PNGs
decoded to the model's channels in process and over gRPC (one server for the module), encoded
images refused for a 5-channel model, and the overlays' grey rendering."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camserve.client import Client
from camserve.config import CamserveConfig
from camserve.errors import InvalidArgumentError
from camserve.explainer import Explainer
from camserve.export import export_model
from camserve.images import display_rgb
from camserve.v1 import camserve_pb2 as pb
from camserve.wire import tensor_to_array
from tests.reference.autograd_cam import autograd_explain, gradient_cam_maps, minmax, upsample
from tests.service.service_helpers import ServerProcess, serve_argv, stub

# name: (input_size, mean, std)
MODELS = {
    "grey": ((1, 32, 32), [0.5], [0.25]),
    "multi": ((4, 40, 64), [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]),
    "five": ((5, 16, 24), [0.5] * 5, [0.5] * 5),
}
RTOL = 1e-5


class TinyNet(nn.Module):
    """conv (stride 2) -> relu -> conv -> relu ("features") -> GAP -> linear, for ``channels`` inputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def nets() -> dict[str, TinyNet]:
    torch.manual_seed(0)
    return {name: TinyNet(size[0]).eval() for name, (size, _, _) in MODELS.items()}


@pytest.fixture(scope="module")
def models_root(nets: dict[str, TinyNet], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("channel_models")
    for name, (size, mean, std) in MODELS.items():
        export_model(
            nets[name],
            "features",
            size,
            root / name,
            name=name,
            architecture="test",
            mean=mean,
            std=std,
            graphs=("explain", "head"),  # the gradient methods and the server need no other
        )
    return root


@pytest.fixture(scope="module")
def explainers(models_root: Path) -> dict[str, Explainer]:
    config = CamserveConfig.load(env={})
    return {name: Explainer(models_root / name, config=config) for name in MODELS}


@pytest.fixture(scope="module")
def server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(serve_argv(models_root), tmp_path_factory.mktemp("server") / "serve.log")
    yield process
    process.stop()


def _pixels(name: str, seed: int = 0) -> np.ndarray:
    """uint8 [H,W,C] at the model's input size."""
    channels, height, width = MODELS[name][0]
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _floats(name: str, pixels: np.ndarray) -> torch.Tensor:
    """The float path: pixels normalised by hand, [1,C,H,W]."""
    _, mean, std = MODELS[name]
    unit = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return (unit - torch.tensor(mean).reshape(1, -1, 1, 1)) / torch.tensor(std).reshape(1, -1, 1, 1)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_manifest_keeps_channels_and_non_square_size(explainers: dict[str, Explainer]) -> None:
    for name, (size, mean, std) in MODELS.items():
        manifest = explainers[name].manifest
        assert tuple(manifest.input_size) == size
        assert list(manifest.mean) == pytest.approx(mean)
        assert list(manifest.std) == pytest.approx(std)


@pytest.mark.parametrize(("field", "mean", "std"), [("mean", [0.5] * 3, [1.0]), ("std", [0.5], [1.0, 1.0])])
def test_export_refuses_normalisation_of_the_wrong_length(
    nets: dict[str, TinyNet], tmp_path: Path, field: str, mean: list[float], std: list[float]
) -> None:
    with pytest.raises(InvalidArgumentError, match="expected 1 values") as caught:
        export_model(
            nets["grey"],
            "features",
            (1, 32, 32),
            tmp_path / "m",
            name="m",
            architecture="t",
            mean=mean,
            std=std,
        )
    assert caught.value.argument == field
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["grey", "multi"])
def test_maps_equal_autograd(nets: dict[str, TinyNet], explainers: dict[str, Explainer], name: str) -> None:
    images = torch.cat([_floats(name, _pixels(name, seed)) for seed in (1, 2)])
    targets = torch.tensor([[-1, 3]])
    result = explainers[name].explain(images, ["gradcam", "layercam"], targets=[[-1, 3]])
    _, acts, grads, ids = autograd_explain(nets[name], "features", images, targets.expand(2, -1))
    np.testing.assert_array_equal(result.target_ids, ids.numpy())
    size = MODELS[name][0][1:]
    for method in ("gradcam", "layercam"):
        want = torch.stack([gradient_cam_maps(acts, grads[:, t])[method] for t in range(2)], dim=1)
        want = minmax(upsample(want, size))
        assert result.maps[method].shape == (2, 2, *size)
        assert float(want.amax()) == pytest.approx(1.0)
        np.testing.assert_allclose(result.maps[method], want.numpy(), rtol=RTOL, atol=1e-6, err_msg=method)


def test_greyscale_png_equals_the_float_path(explainers: dict[str, Explainer], tmp_path: Path) -> None:
    grey = _pixels("grey")[..., 0]
    path = tmp_path / "grey.png"
    path.write_bytes(_png(grey))
    explainer = explainers["grey"]
    want = explainer.explain(_floats("grey", grey[..., None]), "gradcam")
    for item in (str(path), Image.open(path), grey, grey[..., None]):
        got = explainer.explain(item, "gradcam")
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], rtol=0, atol=1e-6)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # an RGB PNG for the 1-channel model: converted to "L"
    rgb[..., 0] = 255 - rgb[..., 0]
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    got = explainer.explain(Image.open(io.BytesIO(_png(rgb))), "gradcam")
    np.testing.assert_array_equal(got.images, explainer.preprocess(expected).numpy())


def test_pixels_of_other_channel_counts_are_refused(explainers: dict[str, Explainer]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"must be \[H,W,4\]") as caught:
        explainers["multi"].explain(_pixels("grey"), "gradcam")
    assert caught.value.argument == "images"
    with pytest.raises(InvalidArgumentError, match="5 input channels") as caught:
        explainers["five"].explain(Image.fromarray(_pixels("multi")), "gradcam")


def test_five_channel_pixels_equal_the_float_path(explainers: dict[str, Explainer]) -> None:
    pixels = _pixels("five")
    got = explainers["five"].explain(pixels, "gradcam")
    want = explainers["five"].explain(_floats("five", pixels), "gradcam")
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "pixels"),
    [("grey", _pixels("grey")[..., 0]), ("multi", _pixels("multi")), ("five", _pixels("five"))],
)
def test_grpc_equals_in_process(
    server: ServerProcess, explainers: dict[str, Explainer], name: str, pixels: np.ndarray
) -> None:
    """Greyscale and RGBA PNGs (the client encodes uint8 pixels) and 5-channel pixels (sent as
    their preprocessed tensor) give the in-process maps."""
    want = explainers[name].explain(pixels, ["gradcam", "layercam"], targets=[[-1, 2]])
    with Client(server.address) as client:
        got = client.explain(pixels, ["gradcam", "layercam"], targets=[[-1, 2]], model=name)
    np.testing.assert_array_equal(got.target_ids, want.target_ids)
    for method in want.maps:
        np.testing.assert_allclose(got.maps[method], want.maps[method], rtol=0, atol=1e-6, err_msg=method)


def test_grpc_decodes_an_rgb_png_for_the_grey_model(
    server: ServerProcess, explainers: dict[str, Explainer]
) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    want = explainers["grey"].explain(Image.fromarray(rgb), "gradcam")
    channel, explain = stub(server.address)
    with channel:
        reply = explain.Explain(
            pb.ExplainRequest(model="grey", methods=["gradcam"], images=[pb.Image(encoded=_png(rgb))]),
            timeout=60,
        )
    (image,) = reply.images
    assert list(image.target_ids) == want.target_ids[0].tolist()
    (got,) = image.maps
    assert got.method == "gradcam"
    np.testing.assert_allclose(
        tensor_to_array(got.data, "data"), want.maps["gradcam"][0, 0], rtol=0, atol=1e-6
    )


def test_grpc_refuses_an_encoded_image_for_five_channels(server: ServerProcess) -> None:
    channel, explain = stub(server.address)
    request = pb.ExplainRequest(
        model="five", methods=["gradcam"], images=[pb.Image(encoded=_png(_pixels("multi")))]
    )
    with channel, pytest.raises(grpc.RpcError) as caught:
        explain.Explain(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[0].encoded" in caught.value.details()
    assert "5 input channels" in caught.value.details()


def test_overlays_render_other_channel_counts_as_grey() -> None:
    unit = torch.rand(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    rgb = display_rgb(unit)
    assert rgb.shape == (2, 3, 5, 3)
    for c in range(3):
        torch.testing.assert_close(rgb[..., c], unit.mean(dim=1))
    torch.testing.assert_close(display_rgb(unit[:, :1])[..., 2], unit[:, 0])
    torch.testing.assert_close(display_rgb(unit[:, :3]), unit[:, :3].permute(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["grey", "multi"])
def test_batch_job_equals_in_process(explainers: dict[str, Explainer], tmp_path: Path, name: str) -> None:
    """Greyscale / RGBA PNGs of other sizes through `camserve batch`'s local engine: the maps (at
    the non-square input size for the 4-channel model) equal the Explainer's on the same files."""
    from camserve.batch import read_maps
    from camserve.batch.encoding import TOLERANCE
    from camserve.batch.run import run_batch
    from tests.batch.batch_data import make_job

    channels = MODELS[name][0][0]
    images = tmp_path / "images"
    images.mkdir()
    ids = [f"img{seed}.png" for seed in range(2)]
    for seed, image_id in enumerate(ids):
        pixels = np.random.default_rng(seed).integers(0, 256, (30, 50, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(images / image_id)
    run_batch(
        make_job(images, tmp_path / "out", methods=("gradcam",)), progress=False, explainer=explainers[name]
    )
    want = explainers[name].explain([str(images / i) for i in ids], "gradcam")
    got = read_maps(tmp_path / "out", ids=ids, method="gradcam")
    assert got.shape == want.maps["gradcam"].shape == (2, 1, *MODELS[name][0][1:])
    np.testing.assert_allclose(got, want.maps["gradcam"], rtol=0, atol=TOLERANCE["float16"])


@pytest.mark.parametrize("name", ["grey", "multi", "five"])
def test_oip_pixels_take_the_models_channels(
    server: ServerProcess, explainers: dict[str, Explainer], name: str
) -> None:
    """Open Inference Protocol: metadata says PIXELS [-1,-1,-1,C]; UINT8 [N,h,w,C] pixels of another
    size give the in-process maps; pixels of 3 channels for a model of another C are refused."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    channels = MODELS[name][0][0]
    pixels = np.random.default_rng(4).integers(0, 256, (2, 30, 50, channels), dtype=np.uint8)
    want = explainers[name].explain(pixels, "gradcam")

    def pixels_input(array: np.ndarray) -> triton.InferInput:
        tensor = triton.InferInput("PIXELS", list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        return tensor

    with triton.InferenceServerClient(server.address) as client:
        metadata = client.get_model_metadata(name, as_json=True)
        shapes = {t["name"]: [int(d) for d in t["shape"]] for t in metadata["inputs"]}
        assert shapes["PIXELS"] == [-1, -1, -1, channels]
        assert shapes["IMAGES"] == [-1, *MODELS[name][0]]
        answer = client.infer(name, [pixels_input(pixels)])
        np.testing.assert_array_equal(answer.as_numpy("TARGET_IDS"), want.target_ids)
        np.testing.assert_allclose(
            answer.as_numpy("SALIENCY_GRADCAM"), want.maps["gradcam"], rtol=0, atol=1e-5
        )
        with pytest.raises(InferenceServerException, match=rf"expected \[N, H, W, {channels}\] pixels"):
            client.infer(name, [pixels_input(np.zeros((1, 30, 50, 3), np.uint8))])
