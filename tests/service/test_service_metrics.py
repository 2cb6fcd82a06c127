"""The Prometheus endpoint after known traffic: exact counts of successes and failures per model, method
and reason, images, batch runs and batch sizes, from both APIs. The server also requires a bearer
token (given through CAMSERVE_SERVICE_AUTH_TOKEN, over plaintext on 127.0.0.1), so refused calls are
counted too."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from tests.service.service_helpers import MODEL, ServerProcess, environ, png_bytes, serve_argv

TOKEN = "metrics-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def metered(
    models_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    process = ServerProcess(
        serve_argv(models_root, "--metrics-port", str(port)),
        tmp_path_factory.mktemp("metrics") / "serve.log",
        env=environ(CAMSERVE_SERVICE_AUTH_TOKEN=TOKEN),
    )
    yield process, port
    process.stop()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (nothing was counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counts_after_known_traffic_are_exact(metered, digit_pixels):
    server, port = metered
    before = scrape(port)
    assert value(before, "nv_inference_pending_request_count", model=MODEL, version="1") == 0
    assert not [key for key in before if key[0].endswith("_created")]

    with triton.InferenceServerClient(server.address) as client:
        pixels = triton.InferInput("PIXELS", [2, 64, 64, 3], "UINT8")
        pixels.set_data_from_numpy(digit_pixels[:2])
        headers = dict(AUTH)
        for _ in range(5):  # 5 requests, 2 images each, one method
            client.infer(MODEL, [pixels], headers=headers, parameters={"methods": "gradcam"})
        bad_input = triton.InferInput("IMAGE", [1], "FP32")
        bad_input.set_data_from_numpy(np.zeros(1, np.float32))
        for _ in range(2):
            with pytest.raises(InferenceServerException, match="unknown input"):
                client.infer(MODEL, [bad_input], headers=headers)
        with pytest.raises(InferenceServerException, match="'magic' is not supported"):
            client.infer(MODEL, [pixels], headers=headers, parameters={"methods": "magic"})
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer(MODEL, [pixels])  # no token: refused before it reaches the model
    with grpc.insecure_channel(server.address) as channel:
        explain = pb_grpc.ExplainServiceStub(channel).Explain
        image = pb.Image(encoded=png_bytes(digit_pixels[2]))
        for _ in range(3):  # 3 requests, 1 image each, two methods
            explain(
                pb.ExplainRequest(model=MODEL, images=[image], methods=["gradcam", "layercam"]),
                timeout=WAIT_S,
                metadata=AUTH,
            )
        with pytest.raises(grpc.RpcError, match="not served here"):
            explain(pb.ExplainRequest(model="nope", images=[image]), timeout=WAIT_S, metadata=AUTH)
        with pytest.raises(grpc.RpcError, match="out of range"):
            bad = pb.Image(encoded=image.encoded, targets=[99])
            explain(pb.ExplainRequest(model=MODEL, images=[bad]), timeout=WAIT_S, metadata=AUTH)

    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    model = {"model": MODEL, "version": "1"}
    assert delta("nv_inference_request_success_total", **model, method="gradcam") == 5 + 3
    assert delta("nv_inference_request_success_total", **model, method="layercam") == 3
    assert delta("nv_inference_count_total", **model, method="gradcam") == 5 * 2 + 3
    assert delta("nv_inference_count_total", **model, method="layercam") == 3
    failure = "nv_inference_request_failure_total"
    assert delta(failure, **model, method="", reason="INVALID_ARGUMENT") == 2 + 1
    assert delta(failure, **model, method="", reason="UNIMPLEMENTED") == 1
    assert delta(failure, model="unknown", version="1", method="", reason="NOT_FOUND") == 1
    assert delta("camserve_auth_failures_total", reason="missing") == 1
    # Sequential requests: one batch run per request, of its images.
    assert delta("nv_inference_exec_count_total", **model) == 5 + 3
    assert delta("nv_inference_batch_size_count", **model) == 5 + 3
    assert delta("nv_inference_batch_size_sum", **model) == 5 * 2 + 3
    assert delta("nv_inference_compute_infer_duration_us_count", **model) == 5 + 3
    assert delta("nv_inference_queue_duration_us_count", **model) == 5 + 3
    assert delta("nv_inference_request_duration_us_count", **model) == 5 + 3
    assert delta("nv_inference_request_duration_us_sum", **model) > delta(
        "nv_inference_compute_infer_duration_us_sum", **model
    )
    assert value(after, "nv_inference_pending_request_count", **model) == 0
    # The camserve_* family counts the same requests by status code.
    assert delta("camserve_requests_total", model=MODEL, code="OK") == 5 + 3
    assert delta("camserve_requests_total", model=MODEL, code="INVALID_ARGUMENT") == 3
