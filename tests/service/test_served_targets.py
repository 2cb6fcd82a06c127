"""Targets of every kind, served: camserve.v1 (the Python client and hand-written Target messages), the
Open Inference Protocol and the batch job give the in-process Explainer's maps and scores for a
classifier (probability, sigmoid), a dense model (box, PNG mask, raw mask, RLE, predicted_region), an
embedding model (cosine, cosine_image) and a dense detection head (box); bad targets get
INVALID_ARGUMENT naming the field.

Four small models are exported once for the module and served by one server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camserve.client import Client
from camserve.config import CamserveConfig
from camserve.methods.target_kinds import Target
from camserve.v1 import camserve_pb2 as pb
from camserve.wire import array_to_tensor, tensor_to_array
from tests.service.service_helpers import ServerProcess, serve_argv, stub

pytestmark = pytest.mark.slow  # four exports and a server: about a minute on the loaded 2-core host

ATOL = 1e-5
INPUT = (3, 32, 32)
GRID = (16, 16)  # the dense model's output grid
DIM = 6  # the embedding model's dimensions


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


class Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # [N,3,16,16]


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()
        self.fc = nn.Linear(8, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).amax(dim=(2, 3)))


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from camserve.export import export_model
    from tests.export.nets import TinyDetector

    root = tmp_path_factory.mktemp("target_models")
    torch.manual_seed(0)
    for name, model, layer, kind, outputs in (
        ("cls", Classifier(), "body.relu", "classification", {}),
        ("seg", Segmenter(), "body.relu", "dense", {}),
        ("emb", Embedder(), "body.relu", "embedding", {}),
        (
            "det",
            TinyDetector(classes=4, size=32),
            "body",
            "detection",
            {"output": "scores", "boxes_output": "boxes"},
        ),
    ):
        export_model(
            model.eval(),
            layer,
            INPUT,
            root / name,
            name=name,
            architecture=f"test:{name}",
            mean=[0.5, 0.5, 0.5],
            std=[0.25, 0.25, 0.25],
            output_kind=kind,
            graphs=("explain", "head"),  # what gradient methods need; the export's own tests verify
            verify=False,
            **outputs,
        )
    return root


@pytest.fixture(scope="module")
def target_server(models_root: Path, tmp_path_factory: pytest.TempPathFactory):
    process = ServerProcess(serve_argv(models_root), tmp_path_factory.mktemp("targets") / "serve.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def explainers(models_root: Path) -> dict:
    from camserve.explainer import Explainer

    config = CamserveConfig.load(env={})
    return {name: Explainer(models_root / name, config=config) for name in ("cls", "seg", "emb", "det")}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _region() -> np.ndarray:
    mask = np.zeros(GRID, np.uint8)
    mask[3:9, 5:12] = 255
    return mask


def _rle(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a 0/1 mask (column-major, 0s first)."""
    flat = (mask > 0).reshape(-1, order="F").astype(int)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    return [*counts, run]


def _assert_same(maps: dict, scores: np.ndarray, local, methods) -> None:
    for method in methods:
        np.testing.assert_allclose(maps[method], local.maps[method], rtol=0, atol=ATOL, err_msg=method)
    np.testing.assert_allclose(scores, local.target_scores, rtol=1e-5, atol=1e-6)


# -- camserve.v1 ---------------------------------------------------------------------------------


def test_model_info_states_output_and_target_kinds(target_server):
    with Client(target_server.address) as client:
        info = {m.name: m for m in client.list_models()}
    assert (info["cls"].output_kind, list(info["cls"].target_kinds)) == ("classification", [0, 1, 2])
    assert (info["seg"].output_kind, list(info["seg"].target_kinds)) == ("dense", [4, 3])
    assert list(info["seg"].output_shape) == [3, *GRID]
    assert (info["emb"].output_kind, list(info["emb"].target_kinds)) == ("embedding", [7, 6, 9, 8])
    assert list(info["emb"].output_shape) == [DIM]


def test_classifier_probability_and_sigmoid_targets_through_the_client(target_server, explainers, pixels):
    targets = [[Target("probability", class_id=3), Target("sigmoid", class_id=-1), 2]]
    methods = ["gradcam", "gradcam++"]
    with Client(target_server.address, model="cls") as client:
        remote = client.explain(list(pixels), methods=methods, targets=targets)
    local = explainers["cls"].explain(list(pixels), methods=methods, targets=targets)
    _assert_same(remote.maps, remote.target_scores, local, methods)
    assert remote.target_kinds.tolist() == [["probability", "sigmoid", "logit"]] * 3
    np.testing.assert_array_equal(remote.target_ids, local.target_ids)
    probabilities = torch.softmax(torch.from_numpy(local.logits), dim=1).numpy()
    np.testing.assert_allclose(remote.target_scores[:, 0], probabilities[:, 3], rtol=1e-5)


def test_dense_region_targets_as_messages_equal_the_explainer(target_server, explainers, pixels):
    mask = _region()
    box = (10.0, 6.0, 24.0, 18.0)  # input pixels: the output cells whose centres lie inside
    specs = [
        pb.Target(kind=pb.TARGET_KIND_REGION, class_id=1, mask=pb.Mask(png=_png(mask))),
        pb.Target(
            kind=pb.TARGET_KIND_REGION,
            class_id=2,
            mask=pb.Mask(raw=pb.RawMask(height=GRID[0], width=GRID[1], data=(mask // 5).tobytes())),
        ),
        pb.Target(
            kind=pb.TARGET_KIND_REGION,
            class_id=1,
            mask=pb.Mask(rle=pb.RleMask(height=GRID[0], width=GRID[1], counts=_rle(mask))),
        ),
        pb.Target(
            kind=pb.TARGET_KIND_REGION, class_id=2, box=pb.Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3])
        ),
        pb.Target(kind=pb.TARGET_KIND_PREDICTED_REGION, class_id=-1),
    ]
    explainer = explainers["seg"]
    images = explainer.preprocess(list(pixels[:2])).numpy()
    request = pb.ExplainRequest(
        model="seg",
        methods=["gradcam", "layercam"],
        images=[pb.Image(tensor=array_to_tensor(image), target_specs=specs) for image in images],
    )
    channel, client = stub(target_server.address)
    with channel:
        reply = client.Explain(request, timeout=60)
    binary = (mask > 0).astype(np.float32)
    row = [
        Target("region", class_id=1, mask=binary),
        Target("region", class_id=2, mask=(mask // 5).astype(np.float32) / 255.0),
        Target("region", class_id=1, mask=binary),
        Target("region", class_id=2, box=box),
        Target("predicted_region", class_id=-1),
    ]
    local = explainer.explain(images, methods=["gradcam", "layercam"], targets=[row])
    maps = {
        method: np.stack(
            [
                np.stack([tensor_to_array(m.data, "map") for m in image.maps if m.method == method])
                for image in reply.images
            ]
        )
        for method in ("gradcam", "layercam")
    }
    scores = np.asarray([list(image.target_scores) for image in reply.images], np.float32)
    _assert_same(maps, scores, local, ["gradcam", "layercam"])
    assert [list(image.target_kinds) for image in reply.images] == [[3, 3, 3, 3, 4]] * 2
    assert list(reply.images[0].target_ids) == [1, 2, 1, 2, int(local.target_ids[0, 4])]
    assert scores[0, 0] == pytest.approx(scores[0, 2], rel=1e-6)  # PNG and RLE: the same region


def test_embedding_cosine_and_cosine_image_through_the_client(target_server, explainers, pixels):
    concept = np.linspace(-1, 1, DIM, dtype=np.float32)
    targets = [
        [Target("cosine", vector=concept), Target("cosine_image", image=1)],
        [Target("dot", vector=concept), Target("cosine_image", image=0)],
    ]
    with Client(target_server.address, model="emb") as client:
        remote = client.explain(list(pixels[:2]), methods=["gradcam"], targets=targets)
    local = explainers["emb"].explain(list(pixels[:2]), methods=["gradcam"], targets=targets)
    _assert_same(remote.maps, remote.target_scores, local, ["gradcam"])
    # cos(e0, e1) is symmetric: both images' image targets explain the same similarity
    assert remote.target_scores[0, 1] == pytest.approx(remote.target_scores[1, 1], rel=1e-5)


@pytest.mark.parametrize(
    ("model", "target", "field", "message"),
    [
        (
            "seg",
            pb.Target(kind=pb.TARGET_KIND_REGION, mask=pb.Mask(png=_png(np.zeros((8, 8), np.uint8)))),
            "images[0].target_specs[0].mask.png",
            "is 8x8; the model's dense output is 16x16",
        ),
        (
            "seg",
            pb.Target(kind=pb.TARGET_KIND_REGION, class_id=0, box=pb.Box(x1=0, y1=0, x2=40, y2=8)),
            "images[0].target_specs[0].box",
            "is not a box inside the 32x32 input",
        ),
        (
            "emb",
            pb.Target(kind=pb.TARGET_KIND_COSINE, vector=[1.0, 2.0, 3.0]),
            "images[0].target_specs[0].vector",
            f"the model's embedding has {DIM} dimensions",
        ),
        (
            "cls",
            pb.Target(kind=pb.TARGET_KIND_REGION, class_id=1),
            "images[0].target_specs[0].kind",
            "a model with a classification output takes targets of kind logit, probability, sigmoid",
        ),
    ],
)
def test_bad_targets_are_invalid_argument_naming_the_field(
    target_server, pixels, model, target, field, message
):
    request = pb.ExplainRequest(
        model=model, images=[pb.Image(encoded=_png(pixels[0]), target_specs=[target])]
    )
    channel, client = stub(target_server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")
    assert message in info.value.details()


def test_targets_and_target_specs_together_are_refused(target_server, pixels):
    image = pb.Image(encoded=_png(pixels[0]), targets=[1], target_specs=[pb.Target(class_id=1)])
    channel, client = stub(target_server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.Explain(pb.ExplainRequest(model="cls", images=[image]), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "images[0].target_specs: set at most one of targets and target_specs"


# -- Open Inference Protocol ---------------------------------------------------------------------


def _infer_input(name: str, array: np.ndarray, datatype: str):
    import tritonclient.grpc as triton

    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_oip_dense_targets_with_kinds_and_data_equal_the_explainer(target_server, explainers, pixels):
    import tritonclient.grpc as triton

    explainer = explainers["seg"]
    images = explainer.preprocess(list(pixels[:2])).numpy()
    binary = (_region() > 0).astype(np.float32)
    ids = np.array([[1, -1], [2, 0]], np.int64)
    kinds = np.array([[3, 4], [3, 3]], np.int64)
    data = np.zeros((2, 2, GRID[0] * GRID[1]), np.float32)
    data[:, 0] = binary.reshape(-1)
    data[1, 1] = 1.0 - binary.reshape(-1)
    client = triton.InferenceServerClient(target_server.address)
    answer = client.infer(
        "seg",
        [
            _infer_input("IMAGES", images, "FP32"),
            _infer_input("TARGETS", ids, "INT64"),
            _infer_input("TARGET_KINDS", kinds, "INT64"),
            _infer_input("TARGET_DATA", data, "FP32"),
        ],
        parameters={"methods": "gradcam"},
    )
    rows = [
        [Target("region", class_id=1, mask=binary), Target("predicted_region", class_id=-1)],
        [Target("region", class_id=2, mask=binary), Target("region", class_id=0, mask=1.0 - binary)],
    ]
    local = explainer.explain(images, methods=["gradcam"], targets=rows)
    maps = {"gradcam": answer.as_numpy("SALIENCY_GRADCAM")}
    _assert_same(maps, answer.as_numpy("TARGET_SCORES"), local, ["gradcam"])
    np.testing.assert_array_equal(answer.as_numpy("TARGET_IDS"), local.target_ids)
    config = client.get_model_config("seg").config
    assert config.parameters["output_kind"].string_value == "dense"
    assert config.parameters["target_kinds"].string_value == "predicted_region=4,region=3"
    assert config.parameters["target_data_length"].string_value == str(GRID[0] * GRID[1])


def test_oip_bad_target_inputs_name_the_input(target_server, explainers, pixels):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    images = explainers["seg"].preprocess(list(pixels[:1])).numpy()
    ids = np.array([[0]], np.int64)
    client = triton.InferenceServerClient(target_server.address)
    cases = [
        (
            [("TARGET_KINDS", np.array([[3]], np.int64), "INT64")],
            "TARGET_DATA: region targets need TARGET_DATA",
        ),
        (
            [
                ("TARGET_KINDS", np.array([[3]], np.int64), "INT64"),
                ("TARGET_DATA", np.zeros((1, 1, 10), np.float32), "FP32"),
            ],
            "inputs[3] (TARGET_DATA).shape: expected FP32 [1, 1, 256] (L = 256), got [1, 1, 10]",
        ),
        (
            [("TARGET_KINDS", np.array([[1]], np.int64), "INT64")],
            "inputs[2] (TARGET_KINDS)[0][0].kind: a model",
        ),
        (
            [("TARGET_KINDS", np.array([[12]], np.int64), "INT64")],
            "inputs[2] (TARGET_KINDS)[0][0]: unknown target kind 12",
        ),
    ]
    for extra, message in cases:
        inputs = [_infer_input("IMAGES", images, "FP32"), _infer_input("TARGETS", ids, "INT64")]
        inputs += [_infer_input(name, array, datatype) for name, array, datatype in extra]
        with pytest.raises(InferenceServerException) as info:
            client.infer("seg", inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert message in info.value.message()


# -- the batch job -------------------------------------------------------------------------------


def test_batch_targets_column_equals_the_explainer(models_root, explainers, pixels, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from camserve.batch import read_errors, read_maps, read_rows
    from camserve.batch.encoding import MapEncoding
    from camserve.batch.job import JobConfig
    from camserve.batch.run import run_batch
    from camserve.batch.sources import SourceSpec

    mask = _region()
    (tmp_path / "m.png").write_bytes(_png(mask))
    paths = []
    for n, image in enumerate(pixels):
        (tmp_path / f"{n}.png").write_bytes(_png(image))
        paths.append(f"{n}.png")
    binary = (mask > 0).astype(np.float32)
    texts = [
        json.dumps([{"kind": "region", "class_id": 1, "mask": "m.png"}, {"kind": "predicted_region"}]),
        json.dumps(
            [{"kind": "region", "class_id": 2, "mask": {"size": list(GRID), "counts": _rle(mask)}}, 0]
        ),
        json.dumps([{"kind": "region", "class_id": 0, "mask": "missing.png"}, 1]),  # an error row
    ]
    table = pa.table({"id": ["a", "b", "c"], "path": paths, "targets": texts})
    pq.write_table(table, tmp_path / "data.parquet")
    job = JobConfig(
        model=str(models_root / "seg"),
        out=str(tmp_path / "out"),
        source=SourceSpec(str(tmp_path / "data.parquet"), path_column="path", targets_column="targets"),
        methods=("gradcam",),
        targets=None,
        config=CamserveConfig.load(env={}),
        encoding=MapEncoding(dtype="float32"),
        batch_size=4,
    )
    run_batch(job, progress=False)
    errors = read_errors(tmp_path / "out").to_pylist()
    assert [e["id"] for e in errors] == ["c"]
    assert "targets[0].mask" in errors[0]["message"] and "missing.png" in errors[0]["message"]
    rows = {r["id"]: r for r in read_rows(tmp_path / "out").to_pylist()}
    explainer = explainers["seg"]
    references = {
        "a": [Target("region", class_id=1, mask=binary), Target("predicted_region", class_id=-1)],
        "b": [Target("region", class_id=2, mask=binary), 0],
    }
    for image_id, row in references.items():
        local = explainer.explain(
            [str(tmp_path / f"{'ab'.index(image_id)}.png")], methods=["gradcam"], targets=[row]
        )
        stored = read_maps(tmp_path / "out", [image_id], "gradcam")
        np.testing.assert_allclose(stored, local.maps["gradcam"], rtol=0, atol=ATOL)
        assert rows[image_id]["target_ids"] == local.target_ids[0].tolist()
        np.testing.assert_allclose(rows[image_id]["target_scores"], local.target_scores[0], rtol=1e-5)
        assert rows[image_id]["target_kinds"] == [3, 4]  # an int target: the default kind


def test_image_targets_of_concurrent_requests_name_their_own_images(target_server, explainers, pixels):
    """Requests are coalesced into batches: a request's image index j stays its own image j."""
    from concurrent.futures import ThreadPoolExecutor

    explainer = explainers["emb"]
    images = explainer.preprocess(list(pixels)).numpy()
    pairs = [(0, 1), (2, 0), (1, 2)]

    def ask(pair: tuple[int, int]) -> pb.ExplainResponse:
        request = pb.ExplainRequest(
            model="emb",
            images=[
                pb.Image(
                    tensor=array_to_tensor(images[n]),
                    target_specs=[pb.Target(kind=pb.TARGET_KIND_COSINE_IMAGE, image=1 - j)],
                )
                for j, n in enumerate(pair)
            ],
        )
        channel, client = stub(target_server.address)
        with channel:
            return client.Explain(request, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(ask, pairs * 2))
    for pair, reply in zip(pairs * 2, replies, strict=True):
        targets = [[Target("cosine_image", image=1)], [Target("cosine_image", image=0)]]
        local = explainer.explain(images[list(pair)], methods=["gradcam"], targets=targets)
        scores = np.asarray([list(image.target_scores) for image in reply.images], np.float32)
        np.testing.assert_allclose(scores, local.target_scores, rtol=1e-5, atol=1e-6)
        maps = np.stack([[tensor_to_array(image.maps[0].data, "map")] for image in reply.images])
        np.testing.assert_allclose(maps, local.maps["gradcam"], rtol=0, atol=ATOL)


def test_image_targets_need_the_same_number_of_targets_per_image(target_server, pixels):
    cosine = pb.Target(kind=pb.TARGET_KIND_COSINE_IMAGE, image=0)
    request = pb.ExplainRequest(
        model="emb",
        images=[
            pb.Image(encoded=_png(pixels[0]), target_specs=[cosine]),
            pb.Image(encoded=_png(pixels[1]), target_specs=[cosine, cosine]),
        ],
    )
    channel, client = stub(target_server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("images: targets that name another image of the request")
    assert "got [1, 2]" in info.value.details()


def test_detection_box_targets_through_both_apis_equal_the_explainer(target_server, explainers, pixels):
    import tritonclient.grpc as triton

    explainer = explainers["det"]
    images = explainer.preprocess(list(pixels[:2])).numpy()
    boxes = [(4.0, 4.0, 20.0, 20.0), (10.0, 12.0, 30.0, 28.0)]
    rows = [[Target("box", class_id=c, box=b) for c, b in zip((1, 3), boxes, strict=True)]] * 2
    local = explainer.explain(images, methods=["gradcam"], targets=rows)
    request = pb.ExplainRequest(
        model="det",
        images=[
            pb.Image(
                tensor=array_to_tensor(image),
                target_specs=[
                    pb.Target(
                        kind=pb.TARGET_KIND_BOX, class_id=c, box=pb.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3])
                    )
                    for c, b in zip((1, 3), boxes, strict=True)
                ],
            )
            for image in images
        ],
    )
    channel, client = stub(target_server.address)
    with channel:
        reply = client.Explain(request, timeout=60)
    maps = {
        "gradcam": np.stack([[tensor_to_array(m.data, "map") for m in image.maps] for image in reply.images])
    }
    scores = np.asarray([list(image.target_scores) for image in reply.images], np.float32)
    _assert_same(maps, scores, local, ["gradcam"])
    answer = triton.InferenceServerClient(target_server.address).infer(
        "det",
        [
            _infer_input("IMAGES", images, "FP32"),
            _infer_input("TARGETS", np.array([[1, 3]] * 2, np.int64), "INT64"),
            _infer_input("TARGET_KINDS", np.full((2, 2), 5, np.int64), "INT64"),
            _infer_input("TARGET_DATA", np.array([boxes] * 2, np.float32), "FP32"),
        ],
        parameters={"methods": "gradcam"},
    )
    _assert_same(
        {"gradcam": answer.as_numpy("SALIENCY_GRADCAM")}, answer.as_numpy("TARGET_SCORES"), local, ["gradcam"]
    )


def test_cli_explain_with_server_sends_target_specs(target_server, explainers, pixels, tmp_path):
    """`camserve explain --server --target SPEC`: a PNG mask file and a box, as the Explainer."""
    import subprocess
    import sys

    image, mask, out = tmp_path / "img.png", tmp_path / "m.png", tmp_path / "remote.npz"
    image.write_bytes(_png(pixels[1]))
    mask.write_bytes(_png(_region()))
    argv = [
        sys.executable,
        "-m",
        "camserve.cli",
        "explain",
        "--server",
        target_server.address,
        "--model",
        "seg",
    ]
    argv += ["--target", f"region:1:mask={mask}", "--target", "region:2:box=4,4,20,12"]
    argv += ["--out", str(out), str(image)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = dict(np.load(out))
    binary = (_region() > 0).astype(np.float32)
    targets = [[Target("region", 1, mask=binary), Target("region", 2, box=(4, 4, 20, 12))]]
    expected = explainers["seg"].explain([str(image)], methods=["gradcam"], targets=targets)
    np.testing.assert_allclose(written["gradcam"], expected.maps["gradcam"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(written["target_scores"], expected.target_scores, rtol=1e-5)
    assert written["target_kinds"].tolist() == [["region", "region"]]
