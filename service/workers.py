"""``camserve serve --workers N``: N server processes on one port, this process supervising them.

Each worker is a whole server (models, batchers, health, both APIs) bound with SO_REUSEPORT, so the
kernel spreads incoming connections over the workers; each gets ``cores / N`` threads. The supervisor
holds the port (bound, not listening) so that ``--port 0`` has one port for all, and refuses a port
another server already holds. ``/metrics`` (ServiceConfig.metrics_port) is served here: every
worker's own endpoint (127.0.0.1, a free port) is read and the samples are summed, so counters,
histograms and ``process_cpu_seconds_total`` cover all workers. SIGTERM / SIGINT are passed on to the
workers, each of which shuts down gracefully (health NOT_SERVING, requests in flight finish). When a
worker dies the others are stopped and ``serve`` exits with status 1: restarts belong to the process
manager (systemd, Kubernetes), which sees the failure.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from camserve.config import CamserveConfig
from camserve.errors import CamserveError, InvalidArgumentError
from camserve.logs import configure_logging

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # model loading in N fresh interpreters on a busy machine
STOP_MARGIN_S = 15.0  # beyond the grace period, before a worker that does not stop is killed
SCRAPE_TIMEOUT_S = 5.0
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"  # which worker said it


def default_workers(config: CamserveConfig) -> int:
    """One worker per two cores (a worker's Python thread and its ONNX Runtime threads share them);
    one on a GPU, whose work one process already feeds ('auto' that resolves to CUDA included)."""
    from camserve.runtime import uses_cuda

    if uses_cuda(config.runtime.device):
        return 1
    return max(1, min(8, (os.cpu_count() or 1) // 2))


def worker_config(config: CamserveConfig, workers: int) -> CamserveConfig:
    """Each worker's share of the cores: ``intra_op_threads`` 0 (all cores) becomes cores / workers."""
    threads = config.runtime.intra_op_threads
    if threads == 0 and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    return config.replace(runtime={"intra_op_threads": threads})


def apply_thread_budget(config: CamserveConfig) -> None:
    """The CAM maths run in torch beside ONNX Runtime: one thread budget for both."""
    if config.runtime.intra_op_threads > 0:
        import torch

        torch.set_num_threads(config.runtime.intra_op_threads)


@contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold ``port`` (0: a free one) on ``host`` with SO_REUSEPORT, bound and not listening, while the
    workers bind it too. A port another process holds is refused first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise InvalidArgumentError(
                    "service.port", f"cannot listen on {host}:{port} ({exc})"
                ) from None
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
        yield int(holder.getsockname()[1])
    finally:
        holder.close()


def _worker_main(
    config: CamserveConfig, directories: dict[str, Path], index: int, log_level: int, messages: Any
) -> None:
    """One worker process: load the models, serve until SIGTERM / SIGINT, report its metrics port."""
    configure_logging(log_level, WORKER_LOG_FORMAT)
    from prometheus_client import disable_created_metrics, start_http_server

    from camserve.service.models import ModelRegistry
    from camserve.service.server import ExplainServer

    apply_thread_budget(config)
    models = ModelRegistry.load(directories, config)
    disable_created_metrics()
    metrics_http, _ = start_http_server(0, addr="127.0.0.1")

    async def serve() -> None:
        server = ExplainServer(config, models, worker=index)
        await server.start()
        messages.put(("ready", index, metrics_http.server_port))
        await server.wait_for_shutdown_signal()

    asyncio.run(serve())


class WorkerPool:
    """Start, watch and stop the worker processes; ``run()`` returns serve's exit status."""

    def __init__(self, config: CamserveConfig, directories: dict[str, Path], workers: int) -> None:
        self.config = config
        self.directories = directories
        self.workers = workers
        self.metrics_ports: list[int] = []
        self._stopping = threading.Event()

    def run(self) -> int:
        service = self.config.service
        context = mp.get_context("spawn")  # never fork a process that imported torch and gRPC
        messages = context.Queue()
        with reserved_port(service.host, service.port) as port:
            config = worker_config(self.config, self.workers).replace(
                service={"port": port, "metrics_port": 0}
            )
            procs = [
                context.Process(
                    target=_worker_main,
                    args=(config, self.directories, i, logging.getLogger().level, messages),
                    name=f"camserve-worker-{i}",
                )
                for i in range(self.workers)
            ]
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            for proc in procs:
                proc.start()
            try:
                if not self._wait_ready(procs, messages):
                    return self._stop(procs, failed=True)
                metrics = serve_aggregate_metrics(service.host, service.metrics_port, self.metrics_ports)
                log.info(
                    "camserve listening on %s:%d workers=%d threads_per_worker=%d models=%s",
                    service.host,
                    port,
                    self.workers,
                    config.runtime.intra_op_threads,
                    ",".join(self.directories),
                )
                failed = self._watch(procs)
                if metrics is not None:
                    metrics.shutdown()
                return self._stop(procs, failed=failed)
            finally:
                for proc in procs:
                    if proc.is_alive():
                        proc.kill()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stopping.is_set():
            log.info("%s: already shutting down", signal.Signals(signum).name)
        self._stopping.set()

    def _wait_ready(self, procs: list[Any], messages: Any) -> bool:
        ready: dict[int, int] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(ready) < len(procs):
            if self._stopping.is_set() or time.monotonic() > deadline:
                return False
            if any(p.exitcode is not None for p in procs):
                log.error("a worker exited during start-up (see its log above)")
                return False
            try:
                _, index, metrics_port = messages.get(timeout=0.2)
            except Exception:  # queue.Empty
                continue
            ready[index] = metrics_port
        self.metrics_ports = [ready[i] for i in range(len(procs))]
        return True

    def _watch(self, procs: list[Any]) -> bool:
        """Until a shutdown signal (False) or a worker's death (True)."""
        while not self._stopping.is_set():
            ended = wait([p.sentinel for p in procs], timeout=0.2)
            if ended:
                dead = next(p for p in procs if p.sentinel in ended)
                dead.join()
                log.error("worker %s exited with %s: stopping the others", dead.name, dead.exitcode)
                return True
        return False

    def _stop(self, procs: list[Any], failed: bool) -> int:
        log.info("stopping %d workers", len(procs))
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.service.grace_period_s + STOP_MARGIN_S
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("%s did not stop in time: killed", proc.name)
                proc.kill()
                proc.join()
        # A worker whose drain is over may die of a second SIGTERM (from the process group) while it exits.
        codes = [0 if p.exitcode == -signal.SIGTERM else p.exitcode for p in procs]
        log.info("workers stopped (exit codes %s)", codes)
        return 1 if failed or any(codes) else 0


def aggregate_metrics(ports: list[int]) -> str:
    """The workers' /metrics, summed sample by sample (same name and labels), in the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as reply:
            text = reply.read().decode("utf-8")
        for family in text_string_to_metric_families(text):
            _, _, samples = families.setdefault(family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_start_time_seconds"):
                    samples[key] = min(samples.get(key, sample.value), sample.value)
                elif family.type == "info" or sample.name.endswith("_info"):
                    samples[key] = sample.value
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {'gauge' if kind == 'info' else kind}")
        for (sample_name, labels), value in samples.items():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(
                f"{sample_name}{{{label_text}}} {_number(value)}"
                if labels
                else f"{sample_name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(value)


def serve_aggregate_metrics(host: str, port: int, worker_ports: list[int]) -> ThreadingHTTPServer | None:
    """The summed /metrics on ``host:port`` in a daemon thread (None when ``port`` is 0)."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the http.server API
            try:
                body = aggregate_metrics(worker_ports).encode()
                status = 200
            except OSError as exc:
                body, status = f"a worker's metrics could not be read: {exc}\n".encode(), 503
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    try:
        httpd = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise CamserveError(f"service.metrics_port: cannot listen on {host}:{port} ({exc})") from None
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    log.info("Prometheus metrics of %d workers on http://%s:%d/metrics", len(worker_ports), host, port)
    return httpd
