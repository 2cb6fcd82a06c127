"""Prometheus metrics of the explanation service, served on ServiceConfig.metrics_port when it is not 0.

Two families: ``camserve_*`` (requests by status code, latency) and Triton-like ``nv_inference_*``
(the names Triton Inference Server uses, so its dashboards and alerts carry over; counters get the
client library's ``_total`` suffix). Both APIs (camserve.v1 and inference.GRPCInferenceService) count
in both. Request counters are per model and method (a request asking for two methods counts once for
each); durations are microseconds, per model:

nv_inference_request_success_total{model,version,method}         requests answered OK
nv_inference_request_failure_total{model,version,method,reason}  failed requests; reason: gRPC code name
nv_inference_count_total{model,version,method}                    images explained (inferences)
nv_inference_exec_count_total{model,version}                      batches run (model executions)
nv_inference_request_duration_us{model,version}                   histogram: receipt to answer, OK requests
nv_inference_queue_duration_us{model,version}                     histogram: a request's wait in the queue
nv_inference_compute_infer_duration_us{model,version}             histogram: one batch run
nv_inference_batch_size{model,version}                            histogram: images per batch run
nv_inference_pending_request_count{model,version}                 gauge: images waiting in the queue

Requests for a model the server does not hold count under model="unknown"; requests that failed
before their methods were checked count under method="".
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from camserve.defaults import METRICS_CONNECTIONS, METRICS_TIMEOUT_S

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "camserve_requests_total", "Explain requests by model and final status code", ["model", "code"]
)
IMAGES = Counter("camserve_images_total", "Images explained successfully", ["model"])
REQUEST_SECONDS = Histogram(
    "camserve_request_seconds",
    "Time from receiving an Explain request to its answer",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_SECONDS = Histogram(
    "camserve_queue_seconds",
    "Time a request's images waited in the batcher's queue",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BATCH_SIZE = Histogram(
    "camserve_batch_size",
    "Size of the batch each request's images ran in",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


MODEL_VERSION = "1"  # every model is served as version "1" (see service/oip.py)
_US_BUCKETS = (100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7)

NV_SUCCESS = Counter("nv_inference_request_success", "Requests answered OK", ["model", "version", "method"])
NV_FAILURE = Counter(
    "nv_inference_request_failure",
    "Failed requests; reason is the gRPC status code name",
    ["model", "version", "method", "reason"],
)
NV_COUNT = Counter(
    "nv_inference_count", "Images explained (inferences), per method", ["model", "version", "method"]
)
NV_EXEC_COUNT = Counter("nv_inference_exec_count", "Batches run (model executions)", ["model", "version"])
NV_REQUEST_US = Histogram(
    "nv_inference_request_duration_us",
    "Time from receiving a request to its answer, requests answered OK (microseconds)",
    ["model", "version"],
    buckets=_US_BUCKETS,
)
NV_QUEUE_US = Histogram(
    "nv_inference_queue_duration_us",
    "Time a request's images waited in the batcher's queue (microseconds)",
    ["model", "version"],
    buckets=_US_BUCKETS,
)
NV_COMPUTE_US = Histogram(
    "nv_inference_compute_infer_duration_us",
    "Duration of one batch run (microseconds)",
    ["model", "version"],
    buckets=_US_BUCKETS,
)
NV_BATCH_SIZE = Histogram(
    "nv_inference_batch_size",
    "Images per batch run (the effective batch size)",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
NV_PENDING = Gauge(
    "nv_inference_pending_request_count", "Images waiting in the batcher's queue", ["model", "version"]
)
AUTH_FAILURES = Counter(
    "camserve_auth_failures", "Calls refused for a missing or wrong bearer token", ["reason"]
)


def observe_request(
    model: str,
    methods: Sequence[str],
    code: str,
    images: int,
    queue_ms: float,
    total_ms: float,
    batch_size: int,
) -> None:
    """Both families' figures of one finished request (``code``: its gRPC status code name)."""
    _child(REQUESTS, model, code).inc()
    labels = methods or ("",)
    if code == "OK":
        _child(IMAGES, model).inc(images)
        _child(REQUEST_SECONDS, model).observe(total_ms / 1e3)
        _child(QUEUE_SECONDS, model).observe(queue_ms / 1e3)
        _child(BATCH_SIZE, model).observe(batch_size)
        for method in labels:
            _child(NV_SUCCESS, model, MODEL_VERSION, method).inc()
            _child(NV_COUNT, model, MODEL_VERSION, method).inc(images)
        _child(NV_REQUEST_US, model, MODEL_VERSION).observe(total_ms * 1e3)
        _child(NV_QUEUE_US, model, MODEL_VERSION).observe(queue_ms * 1e3)
    else:
        for method in labels:
            _child(NV_FAILURE, model, MODEL_VERSION, method, code).inc()


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: every request updates ~10 series, and the client
    library's lookup (checks, a lock) was a measurable part of a small request's CPU. Label values
    are served model names (or "unknown"), checked method names and status code names."""
    return metric.labels(*labels)


def batch_observer(model: str) -> Callable[[int, float], None]:
    """The batcher's ``on_batch(batch_size, compute_ms)`` hook for ``model``."""
    execs = NV_EXEC_COUNT.labels(model, MODEL_VERSION)
    compute = NV_COMPUTE_US.labels(model, MODEL_VERSION)
    sizes = NV_BATCH_SIZE.labels(model, MODEL_VERSION)

    def on_batch(batch_size: int, compute_ms: float) -> None:
        execs.inc()
        compute.observe(compute_ms * 1e3)
        sizes.observe(batch_size)

    return on_batch


def track_pending(model: str, queued: Callable[[], int]) -> None:
    """Report ``queued()`` (images waiting) as the model's pending count at every scrape."""
    NV_PENDING.labels(model, MODEL_VERSION).set_function(queued)


class _QuietHandler(WSGIRequestHandler):
    timeout = METRICS_TIMEOUT_S  # a half-sent request holds its thread this long at most

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class BoundedMetricsServer(ThreadingWSGIServer):
    """prometheus_client's server (one thread per connection) with at most METRICS_CONNECTIONS
    connections served at once: more are closed as they arrive, so half-sent requests cannot pile up
    threads (800 did before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve_metrics(host: str, port: int) -> BoundedMetricsServer:
    """Start the /metrics HTTP endpoint in a daemon thread."""
    disable_created_metrics()  # no *_created series: counters and histograms only

    class Server(BoundedMetricsServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host.strip("[]"), port, make_wsgi_app(), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="camserve-metrics", daemon=True).start()
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return server
