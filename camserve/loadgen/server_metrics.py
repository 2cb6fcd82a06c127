"""The server's own figures for a measurement, read from its Prometheus endpoint (``camserve serve
--metrics-port``) before and after: requests and images served, mean queue and compute time, mean
batch size, and the server's CPU seconds (``process_cpu_seconds_total``, summed over workers)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from camserve.errors import CamserveError

Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SCRAPE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerFigures:
    requests: int  # requests answered (any status), all models
    images: int  # images explained for the model
    batches: int  # batch runs of the model
    queue_ms: float  # mean wait of a request's images in the queue
    compute_ms: float  # mean duration of one batch run
    batch_size: float  # mean images per batch run
    cpu_s: float  # server CPU seconds (all its processes)

    @property
    def cpu_s_per_image(self) -> float:
        return self.cpu_s / self.images if self.images else 0.0


class MetricsReader:
    def __init__(self, url: str) -> None:
        self.url = url if "://" in url else f"http://{url}"
        if not self.url.rstrip("/").endswith("/metrics"):
            self.url = self.url.rstrip("/") + "/metrics"

    def scrape(self) -> Snapshot:
        try:
            with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT_S) as reply:
                text = reply.read().decode("utf-8", "replace")
        except OSError as exc:
            raise CamserveError(f"--metrics-url: cannot read {self.url} ({exc})") from None
        return parse(text)


def parse(text: str) -> Snapshot:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(snapshot: Snapshot, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in snapshot.items() if n == name and wanted <= set(ls))


def difference(before: Snapshot, after: Snapshot, model: str) -> ServerFigures:
    """The server's figures between two snapshots, for ``model``."""

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    def mean(prefix: str, scale: float) -> float:
        count = delta(f"{prefix}_count", model=model)
        return delta(f"{prefix}_sum", model=model) * scale / count if count else 0.0

    if not any(name == "camserve_requests_total" for name, _ in after):
        return _triton_difference(delta, model)
    return ServerFigures(
        requests=round(delta("camserve_requests_total")),
        images=round(delta("camserve_images_total", model=model)),
        batches=round(delta("nv_inference_exec_count_total", model=model)),
        queue_ms=mean("camserve_queue_seconds", 1e3),
        compute_ms=mean("nv_inference_compute_infer_duration_us", 1e-3),
        batch_size=mean("nv_inference_batch_size", 1.0),
        cpu_s=delta("process_cpu_seconds_total"),
    )


def _triton_difference(delta: Callable[..., float], model: str) -> ServerFigures:
    """The same figures from Triton Inference Server's own metrics (its durations are cumulative
    microseconds). It has no process CPU counter: ``cpu_s`` is 0."""

    def counter(name: str) -> float:
        return delta(f"nv_inference_{name}_total", model=model)

    success, images, batches = counter("request_success"), counter("count"), counter("exec_count")
    return ServerFigures(
        requests=round(success + counter("request_failure")),
        images=round(images),
        batches=round(batches),
        queue_ms=counter("queue_duration_us") * 1e-3 / success if success else 0.0,
        compute_ms=counter("compute_infer_duration_us") * 1e-3 / batches if batches else 0.0,
        batch_size=images / batches if batches else 0.0,
        cpu_s=0.0,
    )
