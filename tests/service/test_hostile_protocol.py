"""Hostile bytes and strings against a real server: malformed protobuf on every API (plaintext, and
over TLS with a valid token) is INVALID_ARGUMENT with one log line, never UNKNOWN or a traceback;
megabyte model names are NOT_FOUND with a short message and short log lines; wrong bearer tokens are
rate-limited per address. After each, the server is SERVING and a normal request succeeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as ip  # not camserve.inference: see its docstring
from tritonclient.grpc import service_pb2_grpc as ip_grpc

from camserve.service.security import AUTH_FAILURE_BURST
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import open_channel, tensor_to_array, token_metadata
from tests.service.certs import Certs, make_certs
from tests.service.hostile_helpers import raw_stream, raw_unary
from tests.service.service_helpers import MODEL, ServerProcess, png_bytes, secure_serve_argv

TOKEN = "hostile-Token_42"
TIMEOUT_S = 30.0
EXPLAIN = "/camserve.v1.ExplainService/Explain"
EXPLAIN_STREAM = "/camserve.v1.ExplainService/ExplainStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
UNARY_METHODS = (
    EXPLAIN,
    MODEL_INFER,
    "/camserve.v1.ExplainService/GetModel",
    "/inference.GRPCInferenceService/ModelMetadata",
)
STREAM_METHODS = (EXPLAIN_STREAM, MODEL_STREAM_INFER)
#: Bytes that are not a valid message of any of these types: a truncated varint, a field with an
#: invalid wire type, a length that runs past the end, invalid UTF-8 in a string field (field 1).
MALFORMED = (b"\xff\xff\xff\xff\x0f", b"\x0f", b"\x0a\xff\x01abc", b"\x0a\x02\xc3\x28")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("hostile-certs"))


@pytest.fixture(scope="module")
def token_server(
    models_root: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """TLS (no client certificates) and a bearer token."""
    directory = tmp_path_factory.mktemp("hostile-token")
    token_file = directory / "token.txt"
    token_file.write_text(TOKEN)
    argv = secure_serve_argv(models_root, certs, token_file, client_certs=False)
    process = ServerProcess(argv, directory / "serve.log")
    yield process
    process.stop()


def tls_channel(server: ServerProcess, certs: Certs) -> grpc.Channel:
    return open_channel(server.address, ca_file=certs.ca)


def assert_serves_a_normal_request(channel: grpc.Channel, pixels: np.ndarray, metadata=()) -> None:
    request = pb.ExplainRequest(id="normal", model=MODEL, images=[pb.Image(encoded=png_bytes(pixels))])
    reply = pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=TIMEOUT_S, metadata=metadata)
    maps = tensor_to_array(reply.images[0].maps[0].data, "map")
    assert maps.shape == (64, 64) and np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def check_malformed_everywhere(channel: grpc.Channel, metadata=()) -> None:
    for method in UNARY_METHODS:
        for payload in MALFORMED:
            with pytest.raises(grpc.RpcError) as caught:
                raw_unary(channel, method, payload, timeout=TIMEOUT_S, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, payload)
            name = method.rsplit("/", 1)[1]
            assert caught.value.details() == (
                f"request: {len(payload)} bytes are not a valid {name} request message"
            )
    for method in STREAM_METHODS:
        with pytest.raises(grpc.RpcError) as caught:
            list(raw_stream(channel, method, [MALFORMED[0]], timeout=TIMEOUT_S, metadata=metadata))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


def assert_one_line_per_malformed_request(server: ServerProcess, expected: int) -> None:
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log
    lines = [line for line in server.request_lines() if "malformed method=" in line]
    assert len(lines) == expected
    assert all("status=INVALID_ARGUMENT" in line and "DecodeError" in line for line in lines)


def test_malformed_bytes_are_invalid_argument_on_both_apis(server, digit_pixels):
    before = sum("malformed method=" in line for line in server.request_lines())
    with grpc.insecure_channel(server.address) as channel:
        check_malformed_everywhere(channel)
        assert_serves_a_normal_request(channel, digit_pixels[0])
    assert server.health() == "SERVING"
    expected = before + len(UNARY_METHODS) * len(MALFORMED) + len(STREAM_METHODS)
    assert_one_line_per_malformed_request(server, expected)


def test_malformed_bytes_over_tls_with_a_valid_token_are_invalid_argument(token_server, certs, digit_pixels):
    metadata = token_metadata(TOKEN)
    with tls_channel(token_server, certs) as channel:
        check_malformed_everywhere(channel, metadata)
        assert_serves_a_normal_request(channel, digit_pixels[0], metadata)
        # Without the token nothing is parsed: the answer is UNAUTHENTICATED, not INVALID_ARGUMENT.
        with pytest.raises(grpc.RpcError) as caught:
            raw_unary(channel, EXPLAIN, MALFORMED[0], timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_one_line_per_malformed_request(token_server, len(UNARY_METHODS) * len(MALFORMED) + 2)


def test_a_megabyte_model_name_or_id_is_not_found_with_short_messages_and_log_lines(server, digit_pixels):
    name = "m" * (1 << 20)
    with grpc.insecure_channel(server.address) as channel:
        explain = pb_grpc.ExplainServiceStub(channel)
        infer = ip_grpc.GRPCInferenceServiceStub(channel)
        image = pb.Image(encoded=png_bytes(digit_pixels[0]))
        calls = [
            lambda: explain.Explain(pb.ExplainRequest(model=name, images=[image]), timeout=TIMEOUT_S),
            lambda: explain.GetModel(pb.GetModelRequest(name=name), timeout=TIMEOUT_S),
            lambda: infer.ModelInfer(ip.ModelInferRequest(model_name=name), timeout=TIMEOUT_S),
            lambda: infer.ModelMetadata(ip.ModelMetadataRequest(name=name), timeout=TIMEOUT_S),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details().startswith("model 'mmmm")
            assert "more characters" in caught.value.details() and len(caught.value.details()) < 500
        # A megabyte request id on a served model: answered (the id echoed in full), logged short.
        request_id = "i" * (1 << 20)
        reply = explain.Explain(
            pb.ExplainRequest(id=request_id, model=MODEL, images=[image]), timeout=TIMEOUT_S
        )
        assert reply.id == request_id
        assert_serves_a_normal_request(channel, digit_pixels[1])
    assert max(len(line) for line in server.log().splitlines()) < 4096
    assert server.health() == "SERVING"


def test_wrong_tokens_are_rate_limited_per_address(token_server, certs, digit_pixels):
    wrong = token_metadata("not-the-token")
    codes = []
    with tls_channel(token_server, certs) as channel:
        stub = pb_grpc.ExplainServiceStub(channel)
        for _ in range(3 * AUTH_FAILURE_BURST):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S, metadata=wrong)
            codes.append(caught.value.code())
        # The burst of wrong tokens is UNAUTHENTICATED; then the address is locked out, right token or not.
        assert codes[:AUTH_FAILURE_BURST] == [grpc.StatusCode.UNAUTHENTICATED] * AUTH_FAILURE_BURST
        assert set(codes[AUTH_FAILURE_BURST:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S, metadata=token_metadata(TOKEN))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many wrong bearer tokens" in caught.value.details()
        # One more try per interval: the right token is served again within a few seconds.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                assert_serves_a_normal_request(channel, digit_pixels[2], token_metadata(TOKEN))
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the address stayed locked out"
                time.sleep(0.2)
