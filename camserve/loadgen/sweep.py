"""One load level of ``camserve bench``: start the client processes, warm up, then measurement windows
until the last ``stable_windows`` windows' throughputs agree within ``tolerance`` (at most
``max_windows``), then stop and collect. The figures are those of the last ``stable_windows`` windows;
the request totals cover the whole level, warm-up included, and are compared with the server's."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, field

from camserve.errors import CamserveError
from camserve.loadgen.clients import Target
from camserve.loadgen.drivers import Control, LoadShare, Record, client_process, split_load
from camserve.loadgen.server_metrics import MetricsReader, ServerFigures, Snapshot, difference
from camserve.loadgen.stats import LatencyFigures, figures, in_window, stable
from camserve.loadgen.workload import Workload

FLUSH_LAG_S = 0.5  # records of a window have reached the parent this long after its end
START_TIMEOUT_S = 60.0
STOP_MARGIN_S = 30.0  # beyond the request timeout, for the processes to report after stop


@dataclass(frozen=True)
class WindowPolicy:
    warmup_s: float = 2.0
    window_s: float = 2.0
    tolerance: float = 0.1  # stable when the throughputs are within 10 % of their mean
    stable_windows: int = 3
    max_windows: int = 8


@dataclass
class LevelResult:
    mode: str  # "closed" or "open"
    level: float  # clients, or requests per second
    arrivals: str
    processes: int
    measured: LatencyFigures  # over the last stable_windows windows
    window_throughputs: list[float]
    stable: bool
    sent: int  # requests answered over the whole level (any status), warm-up included
    sent_errors: dict[str, int]
    generator_cpu_s: float
    duration_s: float
    server_measured: ServerFigures | None = None  # server figures over the measured windows
    server_total: ServerFigures | None = None  # over the whole level
    in_process: dict[str, float] = field(default_factory=dict)

    @property
    def generator_cores(self) -> float:
        """The client processes' CPU, in cores used on average."""
        return self.generator_cpu_s / self.duration_s if self.duration_s else 0.0


def run_level(
    workload: Workload,
    target: Target,
    mode: str,
    level: float,
    processes: int,
    policy: WindowPolicy,
    metrics: MetricsReader | None,
    arrivals: str = "constant",
    seed: int = 0,
) -> LevelResult:
    context = mp.get_context("spawn")  # no fork of a process holding gRPC state
    control = Control.create(context)
    shares = [
        LoadShare(i, mode, clients, rate, arrivals, seed * 1000 + i)
        for i, (clients, rate) in enumerate(split_load(mode, level, processes))
    ]
    procs = [
        context.Process(target=client_process, args=(workload, target, s, control), daemon=True)
        for s in shares
    ]
    for proc in procs:
        proc.start()
    collector = _Collector(control, len(procs))
    try:
        collector.wait_for("ready", time.monotonic() + START_TIMEOUT_S)
        snapshots: list[Snapshot] = [metrics.scrape()] if metrics else []
        start = time.monotonic() + 0.05
        control.start_at.value = start
        control.go.set()
        bounds = [start + policy.warmup_s]
        collector.drain_until(bounds[0])
        if metrics:
            snapshots.append(metrics.scrape())
        throughputs: list[float] = []
        while True:
            bounds.append(bounds[-1] + policy.window_s)
            collector.drain_until(bounds[-1])
            if metrics:
                snapshots.append(metrics.scrape())
            collector.drain_until(bounds[-1] + FLUSH_LAG_S)
            done = in_window(collector.records, bounds[-2], bounds[-1])
            throughputs.append(sum(1 for r in done if r[2] == "OK") / policy.window_s)
            is_stable = stable(throughputs, policy.stable_windows, policy.tolerance)
            if is_stable or len(throughputs) >= policy.max_windows:
                break
        control.stop.set()
        cpu = collector.wait_for("done", time.monotonic() + target.timeout_s + STOP_MARGIN_S)
        duration = time.monotonic() - start
    finally:
        control.stop.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    measured_windows = min(policy.stable_windows, len(throughputs))
    first = bounds[-1 - measured_windows]
    records = collector.records
    result = LevelResult(
        mode,
        level,
        arrivals if mode == "open" else "",
        len(procs),
        figures(in_window(records, first, bounds[-1]), bounds[-1] - first),
        throughputs,
        is_stable,
        len(records),
        figures(records, duration).errors,
        sum(cpu),
        duration,
    )
    if metrics:
        final = metrics.scrape()
        result.server_measured = difference(snapshots[-1 - measured_windows], snapshots[-1], workload.model)
        result.server_total = difference(snapshots[0], final, workload.model)
    return result


class _Collector:
    """Reads the client processes' messages: records, readiness, CPU at the end, failures."""

    def __init__(self, control: Control, processes: int) -> None:
        self.control = control
        self.processes = processes
        self.records: list[Record] = []
        self._seen: dict[str, dict[int, float]] = {"ready": {}, "done": {}}

    def _handle(self, message: tuple) -> None:
        kind, index = message[0], message[1]
        if kind == "records":
            self.records.extend(message[2])
        elif kind == "failed":
            raise CamserveError(f"client process {index} failed: {message[2]}")
        else:
            self._seen[kind][index] = message[2] if len(message) > 2 else 0.0

    def drain_until(self, instant: float) -> None:
        while (left := instant - time.monotonic()) > 0:
            try:
                self._handle(self.control.messages.get(timeout=left))
            except queue.Empty:
                return

    def wait_for(self, kind: str, deadline: float) -> list[float]:
        """Every process's ``kind`` message (its value), or an error once ``deadline`` passed."""
        while len(self._seen[kind]) < self.processes:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = self.processes - len(self._seen[kind])
                raise CamserveError(f"{missing} client process(es) did not report {kind!r} in time")
            try:
                self._handle(self.control.messages.get(timeout=min(left, 1.0)))
            except queue.Empty:
                continue
        return list(self._seen[kind].values())
