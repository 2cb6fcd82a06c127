"""Hostile load before authentication and below gRPC (issue 26): compressed requests, unauthenticated
payloads, huge health service names, and HTTP/2 abuse on raw connections (rapid reset, SETTINGS and
PING floods, idle and half-open connections, more connections than the cap). One token-protected
server (plaintext, so that a raw HTTP/2 client can speak to it) with small connection limits serves
the whole module; after each case the server is SERVING and a call with the token succeeds."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.exceptions
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as ip  # not camserve.inference: see its docstring
from tritonclient.grpc import service_pb2_grpc as ip_grpc

from camserve.config import CamserveConfig
from camserve.defaults import METRICS_TIMEOUT_S
from camserve.errors import InvalidArgumentError
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import tensor_to_array, token_metadata
from tests.service.h2_helpers import (
    RawH2,
    headers_then_reset,
    ping_frame,
    settings_frame,
    silent_connection_end,
)
from tests.service.hostile_helpers import MIB, PeakRss, cpu_seconds, raw_unary, rss_bytes
from tests.service.service_helpers import MODEL, ServerProcess, environ, png_bytes, serve_argv, wait_for_log

TOKEN = "net-Token_7"
TIMEOUT_S = 30.0
EXPLAIN = "/camserve.v1.ExplainService/Explain"
MAX_STREAMS = 16
MAX_CONNECTIONS = 24
IDLE_S = 2.0
HANDSHAKE_S = 1.0
HEALTH_NAME_CHARS = 1024  # camserve.defaults.MAX_HEALTH_SERVICE_CHARS


@pytest.fixture(scope="module")
def served(models_root: Path):
    from camserve.service.models import ModelRegistry, discover_models

    config = CamserveConfig.load(env={})
    return ModelRegistry.load(discover_models(models_root), config).get(MODEL), config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def net_server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("hostile-net")
    token_file = directory / "token.txt"
    token_file.write_text(TOKEN)
    env = environ(
        CAMSERVE_SERVICE_METRICS_PORT=str(free_port()),
        CAMSERVE_SERVICE_MAX_CONCURRENT_STREAMS=str(MAX_STREAMS),
        CAMSERVE_SERVICE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        CAMSERVE_SERVICE_CONNECTION_IDLE_TIMEOUT_S=str(IDLE_S),
        CAMSERVE_SERVICE_HANDSHAKE_TIMEOUT_S=str(HANDSHAKE_S),
    )
    argv = serve_argv(models_root, "--auth-token-file", str(token_file))
    process = ServerProcess(argv, directory / "serve.log", env=env)
    yield process
    process.stop()


def explain_ok(address: str, pixels: np.ndarray) -> None:
    """A normal call with the token: answered with a finite, normalised map."""
    with grpc.insecure_channel(address) as channel:
        request = pb.ExplainRequest(id="normal", model=MODEL, images=[pb.Image(encoded=png_bytes(pixels))])
        stub = pb_grpc.ExplainServiceStub(channel)
        reply = stub.Explain(request, timeout=TIMEOUT_S, metadata=token_metadata(TOKEN))
    maps = tensor_to_array(reply.images[0].maps[0].data, "map")
    assert maps.shape == (64, 64) and np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def assert_healthy(server: ServerProcess, pixels: np.ndarray) -> None:
    assert server.proc.poll() is None
    assert server.health() == "SERVING"
    explain_ok(server.address, pixels)


def health_check(address: str, name: str, **kwargs: object) -> grpc.RpcError:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S, **kwargs
            )
    return caught.value


# -- before authentication ---------------------------------------------------------------------------


def test_a_compressed_request_is_refused_before_it_is_inflated(net_server, digit_pixels):
    name = "a" * (48 * MIB)  # gzip: ~48 KB on the wire, 48 MiB inflated
    with PeakRss(net_server.proc.pid, interval_s=0.005) as rss:
        cpu = cpu_seconds(net_server.proc.pid)
        for _ in range(3):
            error = health_check(net_server.address, name, compression=grpc.Compression.Gzip)
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "Compression algorithm 'gzip' is disabled" in error.details()
        cpu = cpu_seconds(net_server.proc.pid) - cpu
    assert rss.growth < 16 * MIB, f"peak RSS +{rss.growth / MIB:.0f} MiB"
    assert cpu < 0.5, f"{cpu:.2f} CPU s"
    assert_healthy(net_server, digit_pixels[0])


def test_an_unauthenticated_request_is_refused_unread(net_server, digit_pixels):
    payload = b"\x0a" + b"\xff" * (40 * MIB)  # not even a valid message: nothing may parse it
    with grpc.insecure_channel(net_server.address, options=[("grpc.max_send_message_length", -1)]) as ch:
        with PeakRss(net_server.proc.pid, interval_s=0.005) as rss:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as caught:
                    raw_unary(ch, EXPLAIN, payload, timeout=TIMEOUT_S)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rss.growth < 16 * MIB, f"peak RSS +{rss.growth / MIB:.0f} MiB"
    assert "malformed" not in net_server.log()
    assert_healthy(net_server, digit_pixels[1])


def test_health_service_names_are_bounded_and_their_memory_returned(net_server, digit_pixels):
    assert health_check(net_server.address, "n" * HEALTH_NAME_CHARS).code() == grpc.StatusCode.NOT_FOUND
    error = health_check(net_server.address, "n" * (HEALTH_NAME_CHARS + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"service: at most {HEALTH_NAME_CHARS} characters, got {HEALTH_NAME_CHARS + 1}"
    # Watch (a stream that would stay open) with a 24 MiB name: refused at once, memory given back.
    # The first big message grows gRPC core's buffers once (~25 MiB); later ones must not add to it.
    request = health_pb2.HealthCheckRequest(service="w" * (24 * MIB))
    with grpc.insecure_channel(net_server.address, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for call in range(7):
            with pytest.raises(grpc.RpcError) as caught:
                next(stub.Watch(request, timeout=TIMEOUT_S))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            if call == 0:
                time.sleep(1.5)  # the collection and trim after big requests: at most once a second
                baseline = rss_bytes(net_server.proc.pid)
    time.sleep(1.5)
    retained = rss_bytes(net_server.proc.pid) - baseline
    assert retained < 12 * MIB, f"retained RSS +{retained / MIB:.0f} MiB after 6 more"
    assert_healthy(net_server, digit_pixels[2])


# -- HTTP/2 and connections --------------------------------------------------------------------------


def test_the_stream_cap_is_advertised_and_enforced(net_server, digit_pixels):
    client = RawH2(net_server.port)
    try:
        client.wait_ended(0.5)  # the server's SETTINGS
        assert client.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
        # The h2 client itself now refuses to open more; gRPC clients queue them the same way.
        for _ in range(MAX_STREAMS):
            client.open_stream()
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            client.open_stream()
    finally:
        client.close()
    assert_healthy(net_server, digit_pixels[3])


def calls_beside(address: str, stop: threading.Event, codes: Counter[str]) -> None:
    """Health checks on their own connection until ``stop``: what other clients see meanwhile."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(2000):  # bounded
            if stop.is_set():
                return
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1


def test_a_rapid_reset_flood_does_not_disturb_other_connections(net_server, digit_pixels):
    codes: Counter[str] = Counter()
    stop = threading.Event()
    beside = threading.Thread(target=calls_beside, args=(net_server.address, stop, codes))
    cpu = cpu_seconds(net_server.proc.pid)
    beside.start()
    client = RawH2(net_server.port)
    try:
        sent = client.flood(headers_then_reset, 20_000)
    finally:
        client.close()
        stop.set()
        beside.join(TIMEOUT_S)
    cpu = cpu_seconds(net_server.proc.pid) - cpu
    assert sent == 20_000
    assert codes["OK"] > 0 and set(codes) == {"OK"}, codes
    assert cpu < 10.0, f"{cpu:.1f} CPU s"
    assert_healthy(net_server, digit_pixels[4])


def test_a_ping_flood_ends_its_connection(net_server, digit_pixels):
    client = RawH2(net_server.port)
    try:
        sent = client.flood(ping_frame, 10_000)
    finally:
        client.close()
    # GOAWAY ENHANCE_YOUR_CALM (11) "too_many_pings"; the PING ACKs behind it may hide its details, and
    # on an idle host the server may close the socket before the client reads it (the next write fails)
    ended_by_server = (
        "GOAWAY 11 b'too_many_pings'",
        "GOAWAY (then more frames)",
        "closed (BrokenPipeError)",
        "closed (ConnectionResetError)",
    )
    assert sent < 10_000 and client.ended in ended_by_server, (sent, client.ended)
    assert_healthy(net_server, digit_pixels[5])


def test_a_settings_flood_that_reads_no_acks_ends_its_connection(net_server, digit_pixels):
    cpu = cpu_seconds(net_server.proc.pid)
    client = RawH2(net_server.port, rcvbuf=4096, timeout_s=5.0)
    try:
        # 9 MB of frames: more than the server's socket send buffer can take (tcp_wmem's 4 MiB at most)
        sent = client.flood(settings_frame, 1_000_000, read=False)
        ended = client.wait_ended(5.0)
    finally:
        client.close()
    cpu = cpu_seconds(net_server.proc.pid) - cpu
    # gRPC core stops after 10,000 unsent SETTINGS acknowledgements (beyond the socket buffers).
    assert sent < 1_000_000 and ended is not None and ended.startswith("closed"), (sent, ended)
    assert cpu < 2.0, f"{cpu:.2f} CPU s"
    assert_healthy(net_server, digit_pixels[6])


def test_idle_and_silent_connections_are_closed(net_server, digit_pixels):
    client = RawH2(net_server.port)
    started = time.monotonic()
    try:
        ended = client.wait_ended(IDLE_S + 5.0)
    finally:
        client.close()
    assert ended == "GOAWAY 0 b'max_idle'" or (ended or "").endswith("b'connection idle'"), ended
    assert IDLE_S - 0.2 < time.monotonic() - started < IDLE_S + 2.0
    received, after_s = silent_connection_end(net_server.port, HANDSHAKE_S + 5.0)
    assert b"Did not receive HTTP/2 settings before handshake timeout" in received
    assert HANDSHAKE_S - 0.2 < after_s < HANDSHAKE_S + 2.0
    assert_healthy(net_server, digit_pixels[7])


def test_connections_beyond_the_cap_are_closed_as_they_arrive(net_server, digit_pixels):
    clients = [RawH2(net_server.port) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        time.sleep(0.3)
        ended = [client.wait_ended(0.05) for client in clients]
        open_now = sum(end is None for end in ended)
        assert MAX_CONNECTIONS - 4 <= open_now <= MAX_CONNECTIONS, ended
        assert all(end.startswith("closed") for end in ended if end is not None), ended
    finally:
        for client in clients:
            client.close()
    time.sleep(0.3)
    assert_healthy(net_server, digit_pixels[8])


# -- item 7: echoed fields, absurd shapes and values, the token file, the metrics endpoint -----------


def explain_stub(address: str) -> tuple[grpc.Channel, pb_grpc.ExplainServiceStub]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(address, options=options)
    return channel, pb_grpc.ExplainServiceStub(channel)


def test_an_answer_too_big_only_through_its_echoed_id_is_refused_before_any_work(net_server, digit_pixels):
    # The request fits in max_message_bytes (64 MiB); its answer (the id plus a 256x256 float32 map)
    # would not.
    image = pb.Image(encoded=png_bytes(digit_pixels[0]))
    output = pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=256, width=256)
    request = pb.ExplainRequest(id="i" * (64 * MIB - 64 * 1024), model=MODEL, images=[image], output=output)
    channel, stub = explain_stub(net_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Explain(request, timeout=TIMEOUT_S, metadata=token_metadata(TOKEN))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details().startswith("request refused before any work: its answer size is")
    assert "the echoed `id` alone is 67043328 bytes (63.9 MiB): send a shorter id" in caught.value.details()
    line = wait_for_log(net_server, "status=RESOURCE_EXHAUSTED")
    assert "request refused before any work" in line
    assert "Traceback" not in net_server.log() and "larger than max" not in net_server.log()


def test_stream_error_answers_clip_the_echoed_model_name(net_server, digit_pixels):
    name = "m" * MIB
    image = pb.Image(encoded=png_bytes(digit_pixels[0]))
    channel, stub = explain_stub(net_server.address)
    with channel:
        requests = iter([pb.ExplainRequest(id="s1", model=name, images=[image])])
        (answer,) = list(stub.ExplainStream(requests, timeout=TIMEOUT_S, metadata=token_metadata(TOKEN)))
    assert answer.id == "s1" and answer.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answer.model == "m" * 128 + f"...({MIB - 128} more characters)"
    assert len(answer.error.message) < 500


def call_explain(address: str, request: pb.ExplainRequest) -> grpc.RpcError | pb.ExplainResponse:
    with grpc.insecure_channel(address) as channel:
        try:
            return pb_grpc.ExplainServiceStub(channel).Explain(
                request, timeout=TIMEOUT_S, metadata=token_metadata(TOKEN)
            )
        except grpc.RpcError as exc:
            return exc


def tensor_request(shape: list[int], data: bytes) -> pb.ExplainRequest:
    tensor = pb.Tensor(shape=shape, data=data, dtype=pb.DATA_TYPE_FLOAT32)
    return pb.ExplainRequest(id="t", model=MODEL, images=[pb.Image(tensor=tensor)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=4).map(lambda s: [*s, 0]))
def test_empty_tensors_of_absurd_shapes_are_invalid_argument_naming_the_field(served, shape):
    from camserve.service.codec import decode_request

    model, config = served
    request = tensor_request(shape, b"")
    with pytest.raises(InvalidArgumentError) as caught:
        decode_request(request, model, config.explain)
    assert caught.value.argument == "images[0].tensor.shape"


def test_huge_shapes_on_both_apis_over_the_wire(net_server):
    error = call_explain(net_server.address, tensor_request([2**62, 0], b""))
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "images[0].tensor.shape: [4611686018427387904, 0] is too big: at most 2147483647 elements"
        " (a 0 counted as 1)"
    )
    images = np.zeros((1, 3, 64, 64), np.float32)
    request = ip.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            ip.ModelInferRequest.InferInputTensor(name="IMAGES", datatype="FP32", shape=[1, 3, 64, 64]),
            ip.ModelInferRequest.InferInputTensor(name="TARGETS", datatype="INT64", shape=[2**62, 0]),
        ],
        raw_input_contents=[images.tobytes(), b""],
    )
    with grpc.insecure_channel(net_server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            ip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, timeout=TIMEOUT_S, metadata=token_metadata(TOKEN)
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("inputs[1] (TARGETS).shape: [4611686018427387904, 0] is too big")
    assert "Traceback" not in net_server.log()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from([3e38, -3e38, 1e6]))
def test_finite_inputs_give_finite_maps_or_invalid_argument(net_server, value):
    data = np.full((3, 64, 64), value, np.float32)
    answer = call_explain(net_server.address, tensor_request([3, 64, 64], data.tobytes()))
    if abs(value) > 1e6:
        assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert answer.details().startswith("images[0].tensor.data: image 0 has values up to")
        assert "(larger ones overflow the model to NaN)" in answer.details()
    else:
        assert isinstance(answer, pb.ExplainResponse), answer
        maps = tensor_to_array(answer.images[0].maps[0].data, "map")
        logits = tensor_to_array(answer.images[0].logits, "logits")
        assert np.isfinite(maps).all() and np.isfinite(logits).all()


def test_a_token_file_that_is_not_ascii_stops_the_server_at_start(tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text("tökenö", encoding="utf-8")
    argv = [
        sys.executable,
        "-m",
        "camserve.cli",
        "serve",
        "--port",
        "0",
        "--auth-token-file",
        str(token_file),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "camserve serve: error: service.auth_token_file: the token must be printable ASCII, got '\\xf6'"
    ]


def thread_count(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("Threads:")[1].split()[0])


def test_the_metrics_endpoint_holds_no_thread_per_half_sent_request(net_server):
    port = int(net_server.log().split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
    before = thread_count(net_server.proc.pid)
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        time.sleep(0.5)
        assert thread_count(net_server.proc.pid) <= before + 8
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(METRICS_TIMEOUT_S + 0.5)  # the held threads time out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200 and b"camserve_requests_total" in reply.read()
