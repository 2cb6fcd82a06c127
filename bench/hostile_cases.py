"""Hostile cases for the soak (``bench/soak.py --hostile-clients N``): each one is a function that
sends one abusive request (or connection) to the server and returns the outcome's name, registered
with the outcomes that count as handled. Add a case anywhere in this file with ``@hostile_case``;
``HOSTILE_CASES`` keeps them in the order they are defined and the soak's hostile clients run them in
turn. Every case is bounded (a few MiB, a few thousand frames, a timeout)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the raw HTTP/2 client of the tests
from tests.service.h2_helpers import RawH2, headers_then_reset, ping_frame, settings_frame  # noqa: E402

MIB = 1024 * 1024
CASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """Where a case sends: the server's address and port, and the model name."""

    address: str
    port: int
    model: str


@dataclass(frozen=True)
class HostileCase:
    name: str
    send: Callable[[Target], str]  # the outcome: "OK", a gRPC status code name, "GOAWAY", "closed"
    expected: frozenset[str]  # outcomes that mean the server handled it


HOSTILE_CASES: list[HostileCase] = []


def hostile_case(name: str, *expected: str) -> Callable[[Callable[[Target], str]], Callable[[Target], str]]:
    def register(send: Callable[[Target], str]) -> Callable[[Target], str]:
        HOSTILE_CASES.append(HostileCase(name, send, frozenset(expected)))
        return send

    return register


def _code(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def _channel(target: Target) -> grpc.Channel:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    return grpc.insecure_channel(target.address, options=options)


# -- before any work: compression, health names, HTTP/2 (issue 26 items 1 and 4) ----------------------


@hostile_case("gzip-bomb", "UNIMPLEMENTED")
def gzip_bomb(target: Target) -> str:
    """A health check whose 48 MiB service name travels as ~48 KB of gzip: refused uninflated."""
    request = health_pb2.HealthCheckRequest(service="a" * (48 * MIB))
    with _channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return _code(lambda: stub.Check(request, timeout=CASE_TIMEOUT_S, compression=grpc.Compression.Gzip))


@hostile_case("long-health-watch", "INVALID_ARGUMENT")
def long_health_watch(target: Target) -> str:
    """A health Watch (no token needed, held open) with an 8 MiB service name."""
    request = health_pb2.HealthCheckRequest(service="w" * (8 * MIB))
    with _channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return _code(lambda: next(stub.Watch(request, timeout=CASE_TIMEOUT_S)))


def _flood(target: Target, frame: Callable[[RawH2, int], None], count: int, **kwargs: object) -> str:
    client = RawH2(target.port, timeout_s=10.0, **kwargs)  # type: ignore[arg-type]
    try:
        sent = client.flood(frame, count)
        ended = client.ended or client.wait_ended(0.5)
    finally:
        client.close()
    if ended is None:
        return "OK" if sent == count else "stalled"
    return "GOAWAY" if ended.startswith("GOAWAY") else "closed"


@hostile_case("rapid-reset", "OK", "GOAWAY")
def rapid_reset(target: Target) -> str:
    """5000 HEADERS + RST_STREAM pairs on one connection."""
    return _flood(target, headers_then_reset, 5000)


@hostile_case("ping-flood", "GOAWAY", "closed")  # closed: ended before its GOAWAY was read
def ping_flood(target: Target) -> str:
    return _flood(target, ping_frame, 5000)


@hostile_case("settings-flood", "OK", "GOAWAY", "closed")
def settings_flood(target: Target) -> str:
    return _flood(target, settings_frame, 5000)


# -- item 7: echoed fields, absurd shapes and values ---------------------------------------------------


@hostile_case("huge-id", "RESOURCE_EXHAUSTED")
def huge_id(target: Target) -> str:
    """An answer over max_message_bytes only through its echoed 63.9 MiB id."""
    output = pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=256, width=256)
    image = pb.Image(tensor=pb.Tensor(shape=[3, 64, 64], data=bytes(3 * 64 * 64 * 4)))
    request = pb.ExplainRequest(
        id="i" * (64 * MIB - 64 * 1024), model=target.model, images=[image], output=output
    )
    with _channel(target) as channel:
        return _code(lambda: pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=CASE_TIMEOUT_S))


@hostile_case("absurd-shape", "INVALID_ARGUMENT")
def absurd_shape(target: Target) -> str:
    request = pb.ExplainRequest(model=target.model, images=[pb.Image(tensor=pb.Tensor(shape=[2**62, 0]))])
    with _channel(target) as channel:
        return _code(lambda: pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=CASE_TIMEOUT_S))


@hostile_case("overflowing-input", "INVALID_ARGUMENT")
def overflowing_input(target: Target) -> str:
    data = np.full((3, 64, 64), 3e38, np.float32).tobytes()
    request = pb.ExplainRequest(
        model=target.model, images=[pb.Image(tensor=pb.Tensor(shape=[3, 64, 64], data=data))]
    )
    with _channel(target) as channel:
        return _code(lambda: pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=CASE_TIMEOUT_S))
