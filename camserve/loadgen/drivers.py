"""The client processes of ``camserve bench``: each runs an asyncio loop that sends requests in closed
loop (``clients`` callers, each waiting for its answer before the next request) or open loop (requests
at scheduled instants, constant or Poisson, whatever the answers do), and reports every request as
``(start, end, status)``. In open loop ``start`` is the scheduled instant, so time spent waiting for a
busy client or server counts as latency. Times are ``time.monotonic()``: one clock for all processes
on Linux."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.loadgen.clients import Stream, Target, make_call, open_channel
from camserve.loadgen.workload import Workload

FLUSH_INTERVAL_S = 0.2  # records travel to the parent at least this often
MAX_OUTSTANDING = 4096  # open loop: requests in flight per process before sends wait (and count it)
OPEN_LOOP_CHANNELS = 4  # open loop: connections per process
READY_TIMEOUT_S = 30.0

Record = tuple[float, float, str]  # (start or scheduled instant, end, status code name)


@dataclass(frozen=True)
class LoadShare:
    """One process's share of a load level."""

    index: int
    mode: str  # "closed" or "open"
    clients: int  # closed loop: concurrent callers in this process
    rate: float  # open loop: requests per second from this process
    arrivals: str  # "constant" or "poisson"
    seed: int


@dataclass
class Control:
    """What the parent shares with its client processes (made from one multiprocessing context)."""

    messages: (
        Any  # Queue of ("ready", i) / ("records", i, [Record]) / ("done", i, cpu_s) / ("failed", i, text)
    )
    go: Any  # Event: start sending at start_at
    start_at: Any  # Value("d"): the monotonic instant the load starts
    stop: Any  # Event: stop sending, finish what is in flight, report

    @classmethod
    def create(cls, context: mp.context.BaseContext) -> Control:
        return cls(context.Queue(), context.Event(), context.Value("d", 0.0), context.Event())


def split_load(mode: str, level: float, processes: int) -> list[tuple[int, float]]:
    """(clients, rate) per process: closed loop spreads ``level`` clients (no process without one),
    open loop spreads ``level`` requests/s evenly."""
    if mode == "closed":
        count = max(1, min(processes, int(level)))
        return [(int(level) // count + (1 if i < int(level) % count else 0), 0.0) for i in range(count)]
    return [(0, level / processes) for _ in range(processes)]


def client_process(workload: Workload, target: Target, share: LoadShare, control: Control) -> None:
    """Entry point of one client process."""
    try:
        cpu_s = asyncio.run(_run(workload, target, share, control))
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which fails the level with it
        control.messages.put(("failed", share.index, f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    control.messages.put(("done", share.index, cpu_s))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(workload: Workload, target: Target, share: LoadShare, control: Control) -> float:
    channel_count = share.clients if share.mode == "closed" else OPEN_LOOP_CHANNELS
    channels = [open_channel(target) for _ in range(channel_count)]
    await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), READY_TIMEOUT_S) for c in channels))
    calls = [make_call(c, workload, target) for c in channels]
    control.messages.put(("ready", share.index))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, control.go.wait)
    await asyncio.sleep(max(0.0, control.start_at.value - time.monotonic()))
    cpu_start = _cpu_seconds()
    records: list[Record] = []
    stopping = asyncio.Event()

    async def watch_stop() -> None:
        await loop.run_in_executor(None, control.stop.wait)
        stopping.set()

    async def flush() -> None:
        while not stopping.is_set():
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if records:
                control.messages.put(("records", share.index, records[:]))
                del records[: len(records)]

    watcher, flusher = asyncio.ensure_future(watch_stop()), asyncio.ensure_future(flush())
    offset = share.index * 7919  # processes start at different images
    if share.mode == "closed":
        await asyncio.gather(
            *(_closed_loop(call, offset + i, len(calls), stopping, records) for i, call in enumerate(calls))
        )
    else:
        await _open_loop(calls, offset, share, stopping, records)
    for call in calls:
        if isinstance(call, Stream):
            await call.close()
    await watcher
    await flusher
    if records:
        control.messages.put(("records", share.index, records))
    cpu_s = _cpu_seconds() - cpu_start
    for channel in channels:
        await channel.close()
    return cpu_s


async def _closed_loop(
    call: Any, first: int, step: int, stopping: asyncio.Event, records: list[Record]
) -> None:
    n = first
    while not stopping.is_set():
        start = time.monotonic()
        status = await call(n)
        records.append((start, time.monotonic(), status))
        n += step


async def _open_loop(
    calls: list[Any], first: int, share: LoadShare, stopping: asyncio.Event, records: list[Record]
) -> None:
    rng = np.random.default_rng(share.seed)
    interval = 1.0 / share.rate
    outstanding: set[asyncio.Future[None]] = set()

    async def send(n: int, scheduled: float) -> None:
        status = await calls[n % len(calls)](n)
        records.append((scheduled, time.monotonic(), status))

    scheduled = time.monotonic()
    n = first
    while not stopping.is_set():
        scheduled += rng.exponential(interval) if share.arrivals == "poisson" else interval
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        while len(outstanding) >= MAX_OUTSTANDING:  # late sends keep their scheduled instant
            await asyncio.wait(outstanding, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(send(n, scheduled))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
        n += 1
    if outstanding:
        await asyncio.wait(outstanding)
