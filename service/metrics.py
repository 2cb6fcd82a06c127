"""Prometheus metrics of the explanation service, served on ServiceConfig.metrics_port when it is not 0."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

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


def serve_metrics(host: str, port: int) -> None:
    """Start the /metrics HTTP endpoint in a daemon thread."""
    start_http_server(port, addr=host)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
