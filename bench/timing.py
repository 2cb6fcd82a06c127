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
