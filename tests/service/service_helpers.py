"""Helpers of the service tests: real `camserve serve` processes on 127.0.0.1 with a free port
(port 0; the bound port is read from the server's log), images and requests.

Every wait has a timeout; ``ServerProcess.stop`` sends SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.loadgen import local_server
from camserve.loadgen.workload import png_bytes
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tests.service.certs import Certs

MODEL = "digits"
SLOW_SMOOTH_N = 256  # noisy copies per image in slow_request
SLOW_METHODS = ("smoothgradcam++", "scorecam")
START_TIMEOUT_S = 90.0  # a cold start imports torch and onnxruntime on a busy 2-core machine


class ServerProcess(local_server.ServerProcess):
    """camserve's one server launcher, with the full log in a failed start's error and two test
    conveniences (the request log lines, the health status)."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        try:
            super().__init__(argv, log_path, env, START_TIMEOUT_S)
        except local_server.ServerStartError as exc:
            raise RuntimeError(f"{exc}\n{exc.log}") from None

    def request_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "camserve.service.requests" in line]

    def health(self, service: str = "") -> str:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def serve_argv(models_root: Path | None, *flags: str) -> list[str]:
    """`camserve --verbose serve` (debug log: the explain runs) on the models under ``models_root``
    (None: no --models, the default model), on a free port, plus ``flags``."""
    argv = local_server.serve_argv(None if models_root is None else str(models_root), *flags)
    return [*argv[:3], "--verbose", *argv[3:]]


def secure_serve_argv(
    models_root: Path | None, certs: Certs, token_file: Path, client_certs: bool = True
) -> list[str]:
    """``serve_argv`` with TLS (the server's certificate from ``certs``), client certificates signed by
    ``certs.ca`` when ``client_certs`` (mTLS), and the bearer token in ``token_file``."""
    mtls = ["--tls-client-ca", str(certs.ca)] if client_certs else []
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    return serve_argv(models_root, *tls, *mtls, "--auth-token-file", str(token_file))


def stub(address: str) -> tuple[grpc.Channel, pb_grpc.ExplainServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.ExplainServiceStub(channel)


def slow_request(pixels: np.ndarray, request_id: str, count: int = 2) -> pb.ExplainRequest:
    """A request that keeps the model busy for a while: Smooth Grad-CAM++ with many noisy copies, and
    Score-CAM. Its images share one run, so a blocker that must outlast a test's waits takes several."""
    return pb.ExplainRequest(
        id=request_id,
        model=MODEL,
        methods=list(SLOW_METHODS),
        images=[pb.Image(encoded=png_bytes(p)) for p in pixels[:count]],
        method_options=pb.MethodOptions(smooth_n=SLOW_SMOOTH_N),
    )


def wait_for_log(server: ServerProcess, needle: str, timeout_s: float = 30.0) -> str:
    """The first request log line containing ``needle``, once it is written."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in server.request_lines():
            if needle in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no request log line with {needle!r} within {timeout_s} s:\n{server.log()}")


def slow_runs(server: ServerProcess) -> int:
    """How many explain runs of slow_request's methods the server has started (its debug log)."""
    # Any number of images: Smooth Grad-CAM++ images now share batches (batch-invariant noise).
    pattern = rf"explain run: images=\d+ methods={re.escape(','.join(SLOW_METHODS))}\n"
    return len(re.findall(pattern, server.log()))


def wait_until_slow_run_starts(server: ServerProcess, runs_before: int, timeout_s: float = 30.0) -> None:
    """Block until the server started a slow run more than ``runs_before`` had been started."""
    deadline = time.monotonic() + timeout_s
    while slow_runs(server) <= runs_before:
        if time.monotonic() > deadline:
            raise AssertionError(f"the slow request did not start within {timeout_s} s:\n{server.log()}")
        time.sleep(0.02)


def environ(**changes: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(changes)
    return env
