"""SIGTERM with requests in flight: health goes NOT_SERVING, new requests are refused with
UNAVAILABLE, the requests in flight complete, and the process exits 0. This server runs with no
--models: the embedded default model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from camserve.v1 import camserve_pb2 as pb
from tests.service.service_helpers import (
    MODEL,
    ServerProcess,
    png_bytes,
    serve_argv,
    slow_request,
    stub,
    wait_until_slow_run_starts,
)

IN_FLIGHT = 3


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(models_root, digit_pixels, tmp_path):
    # No --models: the embedded default model, served as "digits".
    server = ServerProcess(serve_argv(None, "--grace-period-s", "60"), tmp_path / "serve.log")
    try:
        channel, explain_stub = stub(server.address)
        with channel, ThreadPoolExecutor(IN_FLIGHT) as pool:
            in_flight = [
                pool.submit(
                    explain_stub.Explain, slow_request(digit_pixels[i:], f"inflight{i}", count=1), timeout=120
                )
                for i in range(IN_FLIGHT)
            ]
            wait_until_slow_run_starts(server, 0)
            time.sleep(0.3)  # the other two are queued behind the first
            server.terminate()
            deadline = time.monotonic() + 30
            while "shutting down" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "shutting down" in server.log()
            assert server.health() == "NOT_SERVING"
            assert server.health(MODEL) == "NOT_SERVING"
            late = pb.ExplainRequest(
                id="late", model=MODEL, images=[pb.Image(encoded=png_bytes(digit_pixels[0]))]
            )
            try:
                explain_stub.Explain(late, timeout=30)
                raise AssertionError("a request sent during shutdown was answered")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                assert "shutting down" in exc.details()
            replies = [future.result(timeout=120) for future in in_flight]
        assert [r.id for r in replies] == [f"inflight{i}" for i in range(IN_FLIGHT)]
        assert all(len(r.images) == 1 and r.images[0].maps for r in replies)
        assert server.wait(timeout=60) == 0
        log = server.log()
        assert "stopped after" in log and "Traceback" not in log
        assert sum("status=OK" in line for line in server.request_lines()) == IN_FLIGHT
    finally:
        server.stop()
