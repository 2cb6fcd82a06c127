"""Hostile load before authentication and below gRPC (issue 26): compressed requests, unauthenticated
payloads, huge health service names, and HTTP/2 abuse on raw connections (rapid reset, SETTINGS and
PING floods, idle and half-open connections, more connections than the cap). One token-protected
server (plaintext, so that a raw HTTP/2 client can speak to it) with small connection limits serves
the whole module; after each case the server is SERVING and a call with the token succeeds."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.exceptions
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
from tests.service.service_helpers import MODEL, ServerProcess, environ, png_bytes, serve_argv

TOKEN = "net-Token_7"
TIMEOUT_S = 30.0
EXPLAIN = "/camserve.v1.ExplainService/Explain"
MAX_STREAMS = 16
MAX_CONNECTIONS = 24
IDLE_S = 2.0
HANDSHAKE_S = 1.0
HEALTH_NAME_CHARS = 1024  # camserve.defaults.MAX_HEALTH_SERVICE_CHARS


@pytest.fixture(scope="module")
def net_server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("hostile-net")
    token_file = directory / "token.txt"
    token_file.write_text(TOKEN)
    env = environ(
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
    assert sent < 10_000 and client.ended == "GOAWAY 11 b'too_many_pings'"  # ENHANCE_YOUR_CALM
    assert_healthy(net_server, digit_pixels[5])


def test_a_settings_flood_that_reads_no_acks_ends_its_connection(net_server, digit_pixels):
    cpu = cpu_seconds(net_server.proc.pid)
    client = RawH2(net_server.port, rcvbuf=4096, timeout_s=5.0)
    try:
        sent = client.flood(settings_frame, 300_000, read=False)
        ended = client.wait_ended(5.0)
    finally:
        client.close()
    cpu = cpu_seconds(net_server.proc.pid) - cpu
    # gRPC core stops after 10,000 unsent SETTINGS acknowledgements (beyond the socket buffers).
    assert sent < 300_000 and ended is not None and ended.startswith("closed"), (sent, ended)
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
