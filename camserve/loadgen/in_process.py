"""The same work without a server: ``Explainer.explain`` on the benchmark's images, in batches of the
size the server ran, decoding the encoded images as the server does. The reference of the ratios."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from camserve.loadgen.workload import Workload

if TYPE_CHECKING:
    from camserve.explainer import Explainer

WARMUP_RUNS = 2


@dataclass(frozen=True)
class InProcessFigures:
    batch_size: int
    images_per_s: float
    cpu_s_per_image: float
    batch_ms: float  # median time of one batch (with batch size 1: the latency of one image)


def _inputs(workload: Workload, first: int, count: int) -> list[np.ndarray]:
    """What the server would decode from ``count`` requests starting at ``first``."""
    if workload.encoded:
        sources = workload.encoded
        return [
            np.asarray(Image.open(io.BytesIO(sources[(first + k) % len(sources)])).convert("RGB"))
            for k in range(count)
        ]
    return [workload.pixels[(first + k) % len(workload.pixels)] for k in range(count)]


def measure(explainer: Explainer, workload: Workload, batch_size: int, seconds: float) -> InProcessFigures:
    """Batches of ``batch_size`` images back to back for about ``seconds`` (after a warm-up)."""
    methods = list(workload.methods)

    def run(first: int) -> None:
        images = _inputs(workload, first, batch_size)
        targets = [list(workload.targets)] * batch_size if workload.targets else None
        explainer.explain(images, methods=methods, targets=targets)

    for i in range(WARMUP_RUNS):
        run(i * batch_size)
    times: list[float] = []
    cpu_start, start = time.process_time(), time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds or len(times) < 3:
        began = time.perf_counter()
        run(n * batch_size)
        times.append(time.perf_counter() - began)
        n += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    images = n * batch_size
    return InProcessFigures(batch_size, images / elapsed, cpu / images, float(np.median(times)) * 1e3)
