"""Bad requests, a full queue, passed deadlines, cancelled streams and oversize messages each get
their status with a clear message, and the server stays SERVING and keeps answering."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from camserve.v1 import camserve_pb2 as pb
from camserve.wire import array_to_tensor
from tests.service.service_helpers import (
    MODEL,
    ServerProcess,
    png_bytes,
    serve_argv,
    slow_request,
    slow_runs,
    stub,
    wait_for_log,
    wait_until_slow_run_starts,
)

WAIT_S = 60.0


def digit(pixels: np.ndarray) -> pb.Image:
    return pb.Image(encoded=png_bytes(pixels))


def bad_requests(pixels: np.ndarray) -> list[tuple[str, pb.ExplainRequest, grpc.StatusCode, str]]:
    """(name, request, expected status, text the message must contain)."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    image = digit(pixels)
    small_tensor = array_to_tensor(np.zeros((3, 32, 32), np.float32))
    truncated = array_to_tensor(np.zeros((3, 64, 64), np.float32))
    truncated.data = truncated.data[:100]

    def request(**fields) -> pb.ExplainRequest:
        fields.setdefault("model", MODEL)
        fields.setdefault("images", [image])
        return pb.ExplainRequest(**fields)

    return [
        (
            "unknown model",
            request(model="nope"),
            grpc.StatusCode.NOT_FOUND,
            "model 'nope' is not served here",
        ),
        ("no model", request(model=""), invalid, "model: required"),
        ("no images", request(images=[]), invalid, "images: at least one image"),
        (
            "undecodable",
            request(images=[pb.Image(encoded=b"\x89PNG no")]),
            invalid,
            "images[0].encoded: not an image",
        ),
        ("no source", request(images=[image, pb.Image(targets=[1])]), invalid, "images[1]: set either"),
        (
            "tensor shape",
            request(images=[pb.Image(tensor=small_tensor)]),
            invalid,
            "images[0].tensor.shape: expected [3, 64, 64]",
        ),
        (
            "tensor bytes",
            request(images=[pb.Image(tensor=truncated)]),
            invalid,
            "images[0].tensor.data: holds 100",
        ),
        (
            "unsupported method",
            request(methods=["gradcam", "magic"]),
            grpc.StatusCode.UNIMPLEMENTED,
            "methods[1]: 'magic' is not supported",
        ),
        (
            "target out of range",
            request(images=[pb.Image(encoded=image.encoded, targets=[-1, 10])]),
            invalid,
            "images[0].targets[1]: class 10 is out of range",
        ),
        (
            "uint8 raw maps",
            request(output=pb.OutputOptions(dtype=pb.DATA_TYPE_UINT8, normalize=False)),
            invalid,
            "output.dtype: uint8",
        ),
        (
            "custom size without width",
            request(output=pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=32)),
            invalid,
            "output.width: must be in",
        ),
        (
            "smooth_n too large",
            request(method_options=pb.MethodOptions(smooth_n=100000)),
            invalid,
            "method_options.smooth_n",
        ),
    ]


def test_bad_requests_get_their_status_naming_the_field_and_the_server_keeps_serving(server, digit_pixels):
    channel, explain_stub = stub(server.address)
    with channel:
        for name, request, code, message in bad_requests(digit_pixels[0]):
            with pytest.raises(grpc.RpcError) as caught:
                explain_stub.Explain(request, timeout=WAIT_S)
            assert caught.value.code() == code, f"{name}: {caught.value.details()}"
            assert message in caught.value.details(), f"{name}: {caught.value.details()}"
        good = explain_stub.Explain(
            pb.ExplainRequest(model=MODEL, images=[digit(digit_pixels[0])]), timeout=WAIT_S
        )
    assert len(good.images[0].maps) == 1
    assert server.health() == "SERVING" and server.health(MODEL) == "SERVING"
    assert any(
        "status=INVALID_ARGUMENT" in line and "images[0].encoded" in line for line in server.request_lines()
    )


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped(server, digit_pixels):
    channel, explain_stub = stub(server.address)
    with channel, ThreadPoolExecutor(1) as pool:
        runs = slow_runs(server)
        blocker = pool.submit(
            explain_stub.Explain, slow_request(digit_pixels, "deadline-blocker", count=8), timeout=WAIT_S
        )
        wait_until_slow_run_starts(server, runs)  # what comes next waits behind the blocker
        late = pb.ExplainRequest(id="late", model=MODEL, images=[digit(digit_pixels[1])])
        with pytest.raises(grpc.RpcError) as caught:
            explain_stub.Explain(late, timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(blocker.result(timeout=WAIT_S).images) == 8
    line = wait_for_log(server, "id=late ")
    assert "status=DEADLINE_EXCEEDED" in line and "batch_size=0" in line  # it never ran
    assert server.health() == "SERVING"


def test_a_cancelled_stream_drops_its_queued_work_and_the_server_keeps_serving(server, digit_pixels):
    channel, explain_stub = stub(server.address)
    with channel, ThreadPoolExecutor(1) as pool:
        runs = slow_runs(server)
        blocker = pool.submit(
            explain_stub.Explain, slow_request(digit_pixels, "cancel-blocker", count=8), timeout=WAIT_S
        )
        wait_until_slow_run_starts(server, runs)  # what comes next waits behind the blocker
        sent, cancelled = threading.Event(), threading.Event()

        def requests():
            yield pb.ExplainRequest(id="cancelled", model=MODEL, images=[digit(digit_pixels[2])])
            sent.set()
            cancelled.wait(WAIT_S)  # keep the stream open until it is cancelled

        call = explain_stub.ExplainStream(requests(), timeout=WAIT_S)
        assert sent.wait(WAIT_S)
        time.sleep(0.5)  # the server receives it and queues it behind the blocker
        call.cancel()
        cancelled.set()
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        assert caught.value.code() == grpc.StatusCode.CANCELLED
        assert blocker.result(timeout=WAIT_S).id == "cancel-blocker"
    line = wait_for_log(server, "id=cancelled ")
    assert "status=CANCELLED" in line and "batch_size=0" in line
    assert server.health() == "SERVING"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def small_server(models_root, tmp_path_factory):
    """A server with a tiny queue and message limit."""
    flags = ["--max-queue-size", "4", "--max-batch-size", "1", "--max-message-bytes", "1000000"]
    flags += ["--metrics-port", str(free_port())]
    process = ServerProcess(serve_argv(models_root, *flags), tmp_path_factory.mktemp("small") / "serve.log")
    process.metrics_port = int(flags[-1])
    yield process
    process.stop()


def test_a_full_queue_answers_resource_exhausted_at_once_and_the_rest_succeed(small_server, digit_pixels):
    channel, explain_stub = stub(small_server.address)
    blocker_request = slow_request(digit_pixels, "full-blocker", count=1)  # one image: no queue slot
    with channel, ThreadPoolExecutor(9) as pool:
        runs = slow_runs(small_server)
        blocker = pool.submit(explain_stub.Explain, blocker_request, timeout=WAIT_S)
        wait_until_slow_run_starts(small_server, runs)  # out of the queue: 4 free slots

        def one(i: int) -> str:
            request = pb.ExplainRequest(id=f"q{i}", model=MODEL, images=[digit(digit_pixels[i])])
            started = time.monotonic()
            try:
                explain_stub.Explain(request, timeout=WAIT_S)
                return "OK"
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                assert "queue full" in exc.details()
                assert time.monotonic() - started < 2.0  # answered at once, not after the blocker
                return "FULL"

        outcomes = list(pool.map(one, range(8)))
        assert blocker.result(timeout=WAIT_S).id == "full-blocker"
    assert outcomes.count("OK") == 4 and outcomes.count("FULL") == 4, outcomes
    assert small_server.health() == "SERVING"


def test_more_images_than_the_queue_holds_is_resource_exhausted(small_server, digit_pixels):
    channel, explain_stub = stub(small_server.address)
    request = pb.ExplainRequest(model=MODEL, images=[digit(p) for p in digit_pixels[:5]])
    with channel, pytest.raises(grpc.RpcError) as caught:
        explain_stub.Explain(request, timeout=WAIT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5 items but the queue holds at most 4" in caught.value.details()


def test_an_oversize_message_is_resource_exhausted(small_server, digit_pixels):
    channel, explain_stub = stub(small_server.address)
    request = pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=b"\0" * 2_000_000)])
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            explain_stub.Explain(request, timeout=WAIT_S)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in caught.value.details()
        ok = explain_stub.Explain(
            pb.ExplainRequest(model=MODEL, images=[digit(digit_pixels[0])]), timeout=WAIT_S
        )
    assert ok.images
    assert small_server.health() == "SERVING"


def test_metrics_count_requests_by_status(small_server, digit_pixels):
    channel, explain_stub = stub(small_server.address)
    with channel:
        explain_stub.Explain(pb.ExplainRequest(model=MODEL, images=[digit(digit_pixels[0])]), timeout=WAIT_S)
    url = f"http://127.0.0.1:{small_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    ok = re.search(r'camserve_requests_total\{code="OK",model="digits"\} (\d+)', text)
    full = re.search(r'camserve_requests_total\{code="RESOURCE_EXHAUSTED",model="digits"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 1, text
    assert full and int(float(full.group(1))) >= 1, text
    assert "camserve_batch_size_bucket" in text and "camserve_queue_seconds_bucket" in text
