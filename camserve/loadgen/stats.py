"""Figures of a set of requests: throughput, latency percentiles, errors by status code; and the
stability rule for measurement windows (as perf_analyzer: the last ``count`` windows' throughputs
agree within ``tolerance`` of their mean)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camserve.loadgen.drivers import Record

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyFigures:
    requests: int  # answered OK
    throughput: float  # OK answers per second (one image each)
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]  # status code name -> count


def in_window(records: Sequence[Record], start: float, end: float) -> list[Record]:
    """Requests that ended in [start, end)."""
    return [r for r in records if start <= r[1] < end]


def figures(records: Sequence[Record], seconds: float) -> LatencyFigures:
    ok = np.asarray([r[1] - r[0] for r in records if r[2] == "OK"], dtype=np.float64) * 1e3
    errors = dict(sorted(Counter(r[2] for r in records if r[2] != "OK").items()))
    if ok.size == 0:
        return LatencyFigures(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, errors)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ok, PERCENTILES))
    return LatencyFigures(
        int(ok.size), ok.size / seconds, float(ok.mean()), p50, p90, p95, p99, float(ok.max()), errors
    )


def stable(throughputs: Sequence[float], count: int, tolerance: float) -> bool:
    """The last ``count`` throughputs are within ``tolerance`` (a fraction) of their mean."""
    if len(throughputs) < count:
        return False
    last = throughputs[-count:]
    mean = sum(last) / count
    return mean > 0 and max(abs(t - mean) for t in last) <= tolerance * mean
