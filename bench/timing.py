"""Timing helper shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    fn: Callable[[], object], repeats: int, sync: Callable[[], object] = lambda: None
) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call; ``sync`` runs after each
    call inside the timed span (``torch.cuda.synchronize`` for work launched on a GPU)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_median_ms(fn: Callable[[], object], repeats: int, flush: object) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream, timed with CUDA events after three
    warm-up calls; ``flush`` (a large CUDA tensor) is zeroed before each call so L2 starts cold."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        flush.zero_()  # type: ignore[attr-defined]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
