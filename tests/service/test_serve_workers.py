"""`camserve serve --workers 2`: two processes on one port share the connections, /metrics sums both,
answers equal the in-process Explainer's, SIGTERM drains both, a taken port is refused, and a dead
worker stops the server with status 1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from camserve.client import Client
from camserve.loadgen.local_server import free_port
from camserve.loadgen.server_metrics import MetricsReader
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

CONNECTIONS = 24  # one request each: all on one worker has probability 2**-23
_WORKER_PID = re.compile(r"camserve\.service\.requests\[(\d+)\]")


@pytest.fixture(scope="module")
def workers_server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    metrics_port = free_port()
    argv = serve_argv(
        models_root, "--workers", "2", "--metrics-port", str(metrics_port), "--grace-period-s", "60"
    )
    server = ServerProcess(argv, tmp_path_factory.mktemp("workers") / "serve.log")
    server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
    yield server
    server.stop()


def worker_pids(server: ServerProcess) -> set[str]:
    return {m.group(1) for line in server.request_lines() if (m := _WORKER_PID.search(line))}


def test_both_workers_serve_the_port_and_metrics_sum_them(workers_server, explainer, digit_pixels):
    metrics = MetricsReader(workers_server.metrics_url)  # type: ignore[attr-defined]
    before = metrics.scrape()
    request = pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=png_bytes(digit_pixels[0]))])
    for _ in range(CONNECTIONS):  # a new connection each time: the kernel picks a worker per connection
        channel, explain_stub = stub(workers_server.address)
        with channel:
            assert explain_stub.Explain(request, timeout=60).images
    after = metrics.scrape()
    assert len(worker_pids(workers_server)) == 2
    key = ("camserve_requests_total", (("code", "OK"), ("model", MODEL)))
    assert after[key] - before.get(key, 0.0) == CONNECTIONS
    assert after[("process_cpu_seconds_total", ())] > before[("process_cpu_seconds_total", ())]
    # The same maps as in-process, whichever worker answers.
    with Client(workers_server.address) as client:
        remote = client.explain(list(digit_pixels[:3]), methods=["gradcam", "gradcam++"])
    local = explainer.explain(list(digit_pixels[:3]), methods=["gradcam", "gradcam++"])
    for method in ("gradcam", "gradcam++"):
        np.testing.assert_allclose(remote.maps[method], local.maps[method], rtol=0, atol=1e-6)
    np.testing.assert_allclose(remote.logits, local.logits, rtol=0, atol=1e-6)


def test_a_port_the_workers_hold_is_refused(workers_server, models_root):
    argv = [sys.executable, "-m", "camserve.cli", "serve", "--models", str(models_root)]
    argv += ["--workers", "2", "--port", str(workers_server.port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("camserve serve: error: service.port: cannot listen")
    )


def test_sigterm_drains_every_worker(workers_server, digit_pixels):
    channel, explain_stub = stub(workers_server.address)
    with channel, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(explain_stub.Explain, slow_request(digit_pixels, "slow", count=1), timeout=120)
        wait_until_slow_run_starts(workers_server, 0)
        workers_server.terminate()
        reply = slow.result(timeout=120)  # finished by its worker during the grace period
    assert reply.id == "slow" and reply.images[0].maps
    assert workers_server.wait(timeout=90) == 0
    log = workers_server.log()
    assert log.count("shutting down: NOT_SERVING") == 2
    assert "workers stopped (exit codes [0, 0])" in log


def test_a_dead_worker_stops_the_server_with_status_1(models_root, tmp_path):
    server = ServerProcess(serve_argv(models_root, "--workers", "2"), tmp_path / "serve.log")
    try:
        pids = re.findall(r"camserve\.service\.server\[(\d+)\]: camserve worker", server.log())
        assert len(pids) == 2
        os.kill(int(pids[0]), signal.SIGKILL)
        assert server.wait(timeout=90) == 1
        assert "exited with -9: stopping the others" in server.log()
        with pytest.raises(grpc.RpcError):
            channel, explain_stub = stub(server.address)
            with channel:
                explain_stub.ListModels(pb.ListModelsRequest(), timeout=2)
    finally:
        server.stop()
