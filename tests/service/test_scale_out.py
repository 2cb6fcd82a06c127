"""Scale-out: two `camserve serve` replicas behind Debian's nginx running deploy/nginx/camserve.conf (its
upstream pointed at the replicas' ports, everything else as shipped). Several clients send a bounded
stream of requests through nginx over both APIs; one replica is killed mid-run. Every request gets the
right answer (clients retry UNAVAILABLE until a deadline), and both replicas served traffic before the
kill."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import tensor_to_array
from tests.service.service_helpers import MODEL, ServerProcess, png_bytes, serve_argv

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "camserve.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
CLIENTS = 4
REQUESTS_PER_CLIENT = 16
KILL_AFTER = CLIENTS * REQUESTS_PER_CLIENT // 3  # answered requests before replica A is killed
RETRY_DEADLINE_S = 30.0  # per request, over all its retries
ATOL = 1e-4

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light, or nginx)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_site(replicas: list[int], port: int) -> str:
    """The shipped site configuration with the replicas' and nginx's local ports."""
    text = NGINX_CONF.read_text()
    for name, replica in zip(("camserve-a:50051", "camserve-b:50051"), replicas, strict=True):
        assert text.count(f"server {name} ") == 1, f"{NGINX_CONF} no longer lists {name}"
        text = text.replace(f"server {name} ", f"server 127.0.0.1:{replica} ")
    assert text.count("listen 8080 http2;") == 1
    return text.replace("listen 8080 http2;", f"listen 127.0.0.1:{port} http2;")


def render_main(prefix: Path, site: Path) -> str:
    """A main nginx.conf whose pid, logs and temporary files stay in ``prefix``."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would switch to `nobody`, who cannot read the test's private directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n{temp}\n    include {site};\n}}\n"
    )


@dataclass
class Nginx:
    proc: subprocess.Popen
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture()
def replicas(models_root: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    argv = serve_argv(models_root)
    with ThreadPoolExecutor(2) as pool:  # both import torch at once
        started = [pool.submit(ServerProcess, argv, tmp_path / f"replica-{n}.log") for n in "ab"]
        servers = [future.result() for future in started]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture()
def nginx(replicas: list[ServerProcess], tmp_path: Path) -> Iterator[Nginx]:
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    site = prefix / "camserve.conf"
    site.write_text(render_site([r.port for r in replicas], port))
    conf = prefix / "nginx.conf"
    conf.write_text(render_main(prefix, site))
    base = [NGINX, "-p", str(prefix), "-c", str(conf)]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    log_path = prefix / "stdout.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*base, "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Nginx(proc, f"127.0.0.1:{port}", log_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            reply = check(health_pb2.HealthCheckRequest(service=MODEL), timeout=30, wait_for_ready=True)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        yield server
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def explained(server: ServerProcess) -> int:
    """Requests a replica answered OK (its request log)."""
    return sum("status=OK" in line for line in server.request_lines())


def with_retries(call, is_unavailable) -> tuple[object, int]:
    """``call()``, repeated while it fails with UNAVAILABLE, until RETRY_DEADLINE_S; (answer, retries)."""
    deadline = time.monotonic() + RETRY_DEADLINE_S
    retries = 0
    while True:
        try:
            return call(), retries
        except (grpc.RpcError, InferenceServerException) as exc:
            if not is_unavailable(exc) or time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(min(0.05 * 2**retries, 1.0))


@needs_nginx
def test_requests_through_nginx_survive_losing_a_replica(replicas, nginx, explainer, digit_pixels):
    a, b = replicas
    images = digit_pixels[:8]
    expected = explainer.explain(list(images), methods=["gradcam"]).maps["gradcam"]  # [8, 1, 64, 64]
    answered = 0
    answered_lock = threading.Lock()
    enough = threading.Event()
    failures: list[str] = []
    retries_total = [0]

    def unavailable(exc: Exception) -> bool:
        if isinstance(exc, grpc.RpcError):
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return exc.status() == "StatusCode.UNAVAILABLE"

    def client(i: int) -> int:
        nonlocal answered
        done = 0
        with (
            grpc.insecure_channel(nginx.address) as channel,
            triton.InferenceServerClient(nginx.address) as oip,
        ):
            explain = pb_grpc.ExplainServiceStub(channel).Explain
            for k in range(REQUESTS_PER_CLIENT):
                n = (i + k) % len(images)
                if k % 2 == 0:
                    request = pb.ExplainRequest(
                        id=f"c{i}-{k}",
                        model=MODEL,
                        methods=["gradcam"],
                        images=[pb.Image(encoded=png_bytes(images[n]))],
                    )
                    reply, retries = with_retries(partial(explain, request, timeout=10), unavailable)
                    got = tensor_to_array(reply.images[0].maps[0].data, "map")[None]
                else:
                    pixels = triton.InferInput("PIXELS", [1, 64, 64, 3], "UINT8")
                    pixels.set_data_from_numpy(images[n : n + 1])
                    infer = partial(oip.infer, MODEL, [pixels], request_id=f"c{i}-{k}", client_timeout=10)
                    answer, retries = with_retries(infer, unavailable)
                    got = answer.as_numpy("SALIENCY_GRADCAM")[0]
                if not np.allclose(got, expected[n], atol=ATOL):
                    failures.append(f"client {i} request {k}: wrong map for image {n}")
                done += 1
                with answered_lock:
                    answered += 1
                    retries_total[0] += retries
                    if answered >= KILL_AFTER:
                        enough.set()
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        assert enough.wait(120), "the clients did not get far enough"
        served_before = (explained(a), explained(b))
        a.proc.kill()  # mid-run, with requests in flight
        a.proc.wait(timeout=30)
        counts = [future.result(timeout=300) for future in futures]

    assert failures == []
    assert counts == [REQUESTS_PER_CLIENT] * CLIENTS
    assert served_before[0] > 0 and served_before[1] > 0, served_before  # round robin used both
    assert explained(b) > served_before[1]  # b carried on alone
    upstreams = re.findall(r"upstream=(\S+)", nginx.log())
    assert f"127.0.0.1:{a.port}" in " ".join(upstreams) and f"127.0.0.1:{b.port}" in " ".join(upstreams)
    print(f"served before the kill: a={served_before[0]} b={served_before[1]}; retries: {retries_total[0]}")


def test_compose_scale_profile_runs_the_replicas_the_nginx_config_lists():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    scale = {name for name, service in services.items() if "scale" in service.get("profiles", [])}
    assert scale == {"camserve-a", "camserve-b", "nginx"}
    upstream = re.search(r"upstream camserve \{(.*?)\}", NGINX_CONF.read_text(), re.S).group(1)
    listed = re.findall(r"^\s*server (\S+?):50051 ", upstream, re.M)
    assert listed == ["camserve-a", "camserve-b"]
    for name in listed:
        replica = services[name]
        assert replica["command"] == services["camserve"]["command"]
        assert replica["environment"]["CAMSERVE_SERVICE_PORT"] == "50051"
        assert replica["ports"] == []  # reached through nginx only
    proxy = services["nginx"]
    assert proxy["volumes"] == ["./deploy/nginx/camserve.conf:/etc/nginx/conf.d/default.conf:ro"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert set(proxy["depends_on"]) == {"camserve-a", "camserve-b"}
    assert "profiles" not in services["camserve"]  # the default `docker-compose up` is unchanged
