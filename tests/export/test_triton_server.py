"""The exported Triton repository on the real ``tritonserver`` (the PyPI wheel nvidia-pytriton, python
backend), called with tritonclient over gRPC and HTTP: what it serves equals what camserve computes,
requests with different target counts share executions, and the ensemble takes encoded images.
One server per module; it listens on 127.0.0.1 and is stopped at teardown."""

from __future__ import annotations

import importlib.util
import io
import shutil
import threading

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from camserve.config import CamserveConfig
from camserve.explainer import Explainer
from camserve.loadgen.local_server import free_port
from camserve.modeldir import ModelDirectory

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None,
    reason="needs the tritonserver of nvidia-pytriton (scripts/bootstrap.sh installs it)",
)

QUEUE_DELAY_US = 300_000  # long enough that requests sent together reach one execution
CALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> ModelDirectory:
    """A copy of the default model's directory with a maps graph of the default methods."""
    from camserve.default_model import default_model_dir
    from camserve.export.maps import MapsOptions, add_maps_graph

    path = tmp_path_factory.mktemp("maps") / "digits"
    shutil.copytree(default_model_dir(cache_dir=CamserveConfig.load(env={}).runtime.cache_dir), path)
    return add_maps_graph(path, MapsOptions())


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    from camserve.export.triton_repository import write_triton_repository
    from camserve.export.triton_server import TritonServer

    repo = tmp_path_factory.mktemp("triton")
    write_triton_repository(
        model_dir, repo, ensemble=True, max_queue_delay_us=QUEUE_DELAY_US, intra_op_threads=1
    )
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    triton = TritonServer(repo, log=log, **ports)
    try:
        triton.wait_ready(120)
        yield triton
    finally:
        triton.stop()
    assert "Traceback" not in triton.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def graph(model_dir) -> ort.InferenceSession:
    from camserve.export.triton_repository import served_graph

    path = model_dir.graph_path(served_graph(model_dir))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def images(count: int, seed: int, model_dir: ModelDirectory) -> np.ndarray:
    from camserve.images import preprocess

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 64, 64, 3), dtype=np.uint8)
    manifest = model_dir.manifest
    return preprocess(list(pixels), manifest.input_size, manifest.mean, manifest.std).numpy()


def graph_inputs(x: np.ndarray, targets: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
    """The graph's inputs: images, class ids and their kinds (0: logit)."""
    kinds = np.zeros_like(targets)
    return [("images", x, "FP32"), ("targets", targets, "INT64"), ("target_kinds", kinds, "INT64")]


def run_graph(graph: ort.InferenceSession, x: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in graph.get_outputs()]
    feed = {name: value for name, value, _ in graph_inputs(x, targets)}
    return dict(zip(names, graph.run(None, feed), strict=True))


def infer(module, client, model: str, x: np.ndarray, targets: np.ndarray, outputs: list[str] | None = None):
    feeds = []
    for name, value, kind in graph_inputs(x, targets):
        tensor = module.InferInput(name, list(value.shape), kind)
        tensor.set_data_from_numpy(value)
        feeds.append(tensor)
    wanted = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, feeds, outputs=wanted)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_served_maps_equal_camserve_explain(protocol, server, graph, model_dir):
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(server.http, network_timeout=CALL_TIMEOUT_S)
    x = images(3, seed=1, model_dir=model_dir)
    targets = np.array([[-1, 3], [-2, 0], [7, -1]], dtype=np.int64)
    answer = infer(module, client, "digits", x, targets)
    maps = model_dir.manifest.maps
    assert maps is not None and len(maps.methods) == 5
    want = Explainer(model_dir, config=CamserveConfig.load(env={})).explain(
        x, methods=maps.methods, targets=targets
    )
    np.testing.assert_array_equal(answer.as_numpy("target_ids"), want.target_ids)
    np.testing.assert_allclose(answer.as_numpy("logits"), want.logits, atol=1e-5, rtol=0)
    for method, name in zip(maps.methods, maps.outputs[2:], strict=True):
        got = answer.as_numpy(name)
        assert got.shape == want.maps[method].shape == (3, 2, 64, 64), name
        np.testing.assert_allclose(got, want.maps[method], atol=1e-5, rtol=0, err_msg=name)
    # And exactly what the graph gives run here.
    expected = run_graph(graph, x, targets)
    for name, value in expected.items():
        got = answer.as_numpy(name)
        assert got.shape == value.shape and got.dtype == value.dtype, name
        np.testing.assert_allclose(got, value, atol=1e-5, rtol=0, err_msg=name)
    # The top class is resolved by the graph: target -1 is the arg max of the logits.
    assert answer.as_numpy("target_ids")[0, 0] == expected["logits"][0].argmax()
    # Only the outputs asked for come back.
    only = infer(module, client, "digits", x, targets, outputs=["maps_layercam"])
    np.testing.assert_array_equal(only.as_numpy("maps_layercam"), expected["maps_layercam"])
    assert only.as_numpy("logits") is None and only.as_numpy("maps_gradcam") is None


def test_requests_with_different_target_counts_share_executions(server, graph, model_dir):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc)

    def counts() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics("digits").model_stats
        return stats.inference_stats.success.count, stats.execution_count

    before = counts()
    x = images(6, seed=2, model_dir=model_dir)
    target_lists = [[-1], [-1, -2], [3], [4, 5, -3], [-1, 9], [0]]
    answers: dict[int, object] = {}
    done = threading.Event()
    lock = threading.Lock()

    def callback(index: int, result, error) -> None:
        with lock:
            answers[index] = error if error is not None else result
            if len(answers) == len(target_lists):
                done.set()

    for i, targets in enumerate(target_lists):
        feeds = []
        t = np.array([targets], dtype=np.int64)
        for name, value, kind in graph_inputs(x[i : i + 1], t):
            tensor = grpcclient.InferInput(name, list(value.shape), kind)
            tensor.set_data_from_numpy(value)
            feeds.append(tensor)
        client.async_infer(
            "digits",
            feeds,
            lambda result, error, i=i: callback(i, result, error),
            client_timeout=CALL_TIMEOUT_S,
        )
    assert done.wait(CALL_TIMEOUT_S), f"{len(answers)} of {len(target_lists)} answers"
    for i, targets in enumerate(target_lists):
        answer = answers[i]
        assert not isinstance(answer, Exception), answer
        alone = run_graph(graph, x[i : i + 1], np.array([targets], dtype=np.int64))
        for name, value in alone.items():
            got = answer.as_numpy(name)  # each answer keeps its own target count
            assert got.shape == value.shape, (i, name)
            np.testing.assert_allclose(got, value, atol=1e-5, rtol=0, err_msg=f"{i} {name}")
    requests, executions = (a - b for a, b in zip(counts(), before, strict=True))
    assert requests == len(target_lists)
    assert 1 <= executions < requests


def encoded(pixels: np.ndarray, kind: str) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **({"quality": 90} if kind == "JPEG" else {}))
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)[None]


def test_the_ensemble_takes_encoded_images(server, graph, model_dir):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from camserve.images import preprocess

    manifest = model_dir.manifest
    client = grpcclient.InferenceServerClient(server.grpc)
    rng = np.random.default_rng(3)
    for shape, kind in (((64, 64, 3), "PNG"), ((90, 70, 3), "PNG"), ((80, 100, 3), "JPEG")):
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        data = encoded(pixels, kind)
        targets = np.array([[-1, 2]], dtype=np.int64)
        feeds = [grpcclient.InferInput("encoded", list(data.shape), "UINT8")]
        feeds[0].set_data_from_numpy(data)
        for name, value, kind in graph_inputs(data, targets)[1:]:  # the ids and kinds
            feeds.append(grpcclient.InferInput(name, list(value.shape), kind))
            feeds[-1].set_data_from_numpy(value)
        answer = client.infer("digits_encoded", feeds)
        decoded = np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))
        x = preprocess(decoded, manifest.input_size, manifest.mean, manifest.std).numpy()
        expected = run_graph(graph, x, targets)
        # At the input size the numbers are camserve's; a resize is Pillow's filter (within ~1e-5).
        tolerance = 1e-5 if shape[:2] == tuple(manifest.input_size[1:]) else 2e-3
        for name, value in expected.items():
            np.testing.assert_allclose(answer.as_numpy(name), value, atol=tolerance, rtol=0, err_msg=name)
        np.testing.assert_array_equal(answer.as_numpy("target_ids"), expected["target_ids"])
    garbage = np.frombuffer(b"not an image", dtype=np.uint8)[None]
    feeds = [grpcclient.InferInput("encoded", list(garbage.shape), "UINT8")]
    feeds[0].set_data_from_numpy(garbage)
    for name, value, kind in graph_inputs(garbage, np.array([[-1]], dtype=np.int64))[1:]:
        feeds.append(grpcclient.InferInput(name, list(value.shape), kind))
        feeds[-1].set_data_from_numpy(value)
    with pytest.raises(InferenceServerException, match="encoded: not a readable image") as error:
        client.infer("digits_encoded", feeds)
    assert "INVALID_ARG" in str(error.value.status())


def test_the_preprocessing_model_matches_camserve(model_dir):
    from camserve.export.triton_python_preprocess import preprocess as triton_preprocess
    from camserve.images import preprocess

    manifest = model_dir.manifest
    rng = np.random.default_rng(4)
    for shape in ((64, 64, 3), (100, 80, 3), (30, 50, 3)):
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        data = encoded(pixels, "PNG").tobytes()
        got = triton_preprocess(data, tuple(manifest.input_size[1:]), manifest.mean, manifest.std)
        expected = preprocess(pixels, manifest.input_size, manifest.mean, manifest.std).numpy()[0]
        assert got.shape == expected.shape and got.dtype == np.float32
        atol = 0.0 if shape[:2] == (64, 64) else 1e-5 / min(manifest.std)
        np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    # Zero padding after the image's end is ignored (several images in one request share a length).
    padded = encoded(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "PNG").tobytes()
    size = tuple(manifest.input_size[1:])
    np.testing.assert_array_equal(
        triton_preprocess(padded + bytes(100), size, manifest.mean, manifest.std),
        triton_preprocess(padded, size, manifest.mean, manifest.std),
    )


def test_camserve_bench_measures_the_triton_server(server, model_dir, tmp_path):
    """`camserve bench --api oip` against Triton: graph-input requests, counts equal Triton's own."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "camserve.cli", "bench", "--server", server.grpc, "--api", "oip"]
    argv += [
        "--metrics-url",
        server.metrics_url,
        "--model",
        "digits",
        "--concurrency",
        "4",
        "--processes",
        "1",
    ]
    argv += ["--warmup-s", "0.5", "--window-s", "0.5", "--stable-windows", "2", "--max-windows", "3"]
    argv += ["--target", "-1", "--target", "2", "--method", "gradcam++", "--model-dir", str(model_dir.path)]
    argv += ["--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    (level,) = json.loads(out.read_text())["levels"]
    assert level["sent_errors"] == {} and level["measured"]["requests"] > 0
    # Every answered request was counted by Triton (nv_inference_request_success), and nothing else.
    assert level["sent"] == level["server_total"]["requests"] == level["server_total"]["images"]
    assert 1 <= level["server_measured"]["batch_size"] <= 16
    assert level["server_total"]["cpu_s"] == 0.0  # Triton has no process CPU counter


BENCH_REQUEST_CHECK = """
import sys
import numpy as np
from camserve.errors import InvalidArgumentError
from camserve.inference import grpc_service_pb2 as ip
from camserve.loadgen.oip import GraphModel, graph_request, map_outputs
from camserve.modeldir import ModelDirectory

manifest = ModelDirectory(sys.argv[1]).manifest
outputs = map_outputs(manifest, ["gradcam++", "layercam"])
assert outputs == ["maps_gradcampp", "maps_layercam"], outputs
x = np.random.default_rng(5).normal(size=(1, 3, 64, 64)).astype(np.float32)
served = GraphModel({"images": (-1, 3, 64, 64), "targets": (-1, 3)}, tuple(manifest.maps.outputs))
request = ip.ModelInferRequest.FromString(graph_request("digits", served, outputs, [4], x))
got = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
assert got == [("images", "FP32", [1, 3, 64, 64]), ("targets", "INT64", [1, 3])], got
assert np.array_equal(np.frombuffer(request.raw_input_contents[0], "<f4").reshape(x.shape), x)
assert np.frombuffer(request.raw_input_contents[1], "<i8").tolist() == [4, -1, -1]  # padded slots
assert [o.name for o in request.outputs] == outputs
for call, message in (
    (lambda: map_outputs(manifest, ["cam"]), "--method: the maps graph has no cam"),
    (lambda: graph_request("digits", served, outputs, [1, 2, 3, 4], x), "--target: the model takes 3"),
):
    try:
        call()
    except InvalidArgumentError as exc:
        assert str(exc).startswith(message), exc
    else:
        raise AssertionError(message)
print("ok")
"""


def test_bench_requests_feed_the_graph_and_ask_for_the_chosen_maps(model_dir):
    """camserve's ``inference`` stubs and tritonclient's cannot share a process: checked in a subprocess."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", BENCH_REQUEST_CHECK, str(model_dir.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
