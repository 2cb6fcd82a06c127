"""Dynamic batching: work items from any number of requests are queued and coalesced into one call of
a runner function, which runs in a worker thread so the event loop stays responsive.

The batcher knows nothing about what it runs. Each item has a hashable ``key``; only items with equal
keys share a batch, and the runner gets the key with the payloads and a ``stop()`` check that turns
True once none of the batch's items is wanted any more (all cancelled or past their deadline): the
runner asks it between its steps so abandoned work stops early. A batch starts as soon as it holds
``max_batch_size`` items, or as many as the previous batch had (a lone client's requests do not wait
for company that never comes; the first batch expects a full one), or when its oldest item has waited
``max_queue_delay_ms``. Items whose deadline passed or whose future was cancelled are dropped before
they run. When a batch fails, its items run again one by one so that one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from camserve.errors import ResourceExhaustedError
from camserve.service.cancellation import StopCheck
from camserve.service.errors import DeadlineExceededError, UnavailableError

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

#: Runs one batch: ``runner(key, payloads, stop)`` returns one result per payload, in order. Called in
#: the batcher's worker thread; ``stop()`` (see the module docstring) may be called from it at any time.
BatchRunner = Callable[[Any, list[P], StopCheck], Sequence[R]]  # key: the runner's own hashable type


@dataclass(frozen=True)
class BatchStats:
    queue_ms: float  # from submit to the start of the run that produced the result
    compute_ms: float  # duration of that run
    batch_size: int  # items in that run


@dataclass(frozen=True)
class Completed(Generic[R]):
    value: R
    stats: BatchStats


class _Item(Generic[P, R]):
    __slots__ = ("key", "payload", "deadline", "future", "enqueued_at", "queued")

    def __init__(self, key: Hashable, payload: P, deadline: float | None, future: asyncio.Future) -> None:
        self.key = key
        self.payload = payload
        self.deadline = deadline
        self.future: asyncio.Future[Completed[R]] = future
        self.enqueued_at = time.monotonic()
        self.queued = True


class DynamicBatcher(Generic[P, R]):
    """Queues work items and runs them in batches; see the module docstring."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(batch_size, compute_ms)`` is called on the event loop after every successful run."""
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._runner = runner
        self._on_batch = on_batch
        # One thread: batches of one model run one after another; the queue fills meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{name}")
        self._queues: dict[Hashable, deque[_Item[P, R]]] = {}
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Items worth waiting for: as many as the last batch had (the load seen lately), so a lone
        # client's request runs at once instead of waiting max_queue_delay_ms for company.
        self._expected_batch = max_batch_size

    @property
    def queued(self) -> int:
        """Items waiting (not yet running)."""
        return self._queued

    def start(self) -> None:
        """Start the scheduling task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.name}")

    def submit(
        self, key: Hashable, payloads: Sequence[P], deadline: float | None = None
    ) -> list[asyncio.Future[Completed[R]]]:
        """Queue ``payloads`` (all or none) and return one future per payload.

        ``deadline`` is a ``time.monotonic()`` instant; items still waiting then fail with
        DeadlineExceededError. Cancelling a future drops its item if it has not started.
        Raises ResourceExhaustedError when the queue cannot take them all, UnavailableError when closed.
        """
        if self._closing or self._task is None:
            raise UnavailableError(f"{self.name}: not accepting work (server shutting down)")
        n = len(payloads)
        if n > self.max_queue_size:
            raise ResourceExhaustedError(
                f"{self.name}: request has {n} items but the queue holds at most {self.max_queue_size}; "
                "send fewer per request"
            )
        if self._queued + n > self.max_queue_size:
            raise ResourceExhaustedError(
                f"{self.name}: queue full ({self._queued} of {self.max_queue_size} waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(key, deque())
        futures = []
        for payload in payloads:
            item: _Item[P, R] = _Item(key, payload, deadline, loop.create_future())
            item.future.add_done_callback(functools.partial(self._forget_if_cancelled, item))
            queue.append(item)
            futures.append(item.future)
        self._queued += n
        self._wakeup.set()
        return futures

    async def close(self) -> None:
        """Take no new work, run what is queued (without waiting for fuller batches), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # -- scheduling ---------------------------------------------------------------------------------

    def _forget_if_cancelled(self, item: _Item[P, R], _future: object = None) -> None:
        if item.queued and item.future.cancelled():
            self._dequeue(item)
            self._queues[item.key].remove(item)
            if not self._queues[item.key]:
                del self._queues[item.key]

    def _dequeue(self, item: _Item[P, R]) -> None:
        item.queued = False
        self._queued -= 1

    async def _schedule(self) -> None:
        while True:
            key, items = await self._next_batch()
            if key is None:
                return
            if items:
                await self._execute(key, items)

    async def _next_batch(self) -> tuple[Hashable | None, list[_Item[P, R]]]:
        """The next batch to run, once it is full or its oldest item has waited long enough."""
        while True:
            if not self._queues:
                if self._closing:
                    return None, []
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The key whose oldest item has waited longest goes first.
            key = min(self._queues, key=lambda k: self._queues[k][0].enqueued_at)
            queue = self._queues[key]
            wait_s = queue[0].enqueued_at + self.max_queue_delay_s - time.monotonic()
            if len(queue) >= self._expected_batch or self._closing or wait_s <= 0:
                items = self._take(key)
                self._expected_batch = max(1, len(items))
                return key, items
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except TimeoutError:
                pass

    def _take(self, key: Hashable) -> list[_Item[P, R]]:
        queue = self._queues[key]
        now = time.monotonic()
        items: list[_Item[P, R]] = []
        while queue and len(items) < self.max_batch_size:
            item = queue.popleft()
            self._dequeue(item)
            if item.future.done():
                continue
            if item.deadline is not None and now >= item.deadline:
                waited = (now - item.enqueued_at) * 1e3
                item.future.set_exception(
                    DeadlineExceededError(f"{self.name}: deadline passed after {waited:.0f} ms in the queue")
                )
                continue
            items.append(item)
        if not queue:
            del self._queues[key]
        return items

    async def _execute(self, key: Hashable, items: list[_Item[P, R]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(
                self._executor, self._runner, key, [i.payload for i in items], _stop_check(items)
            )
            if len(results) != len(items):
                raise RuntimeError(f"runner returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            if all(_abandoned(item) for item in items):
                log.info("%s: batch of %d stopped: nobody waits for it any more", self.name, len(items))
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            if len(items) == 1:
                if not items[0].future.done():
                    items[0].future.set_exception(exc)
                return
            log.warning(
                "%s: batch of %d failed (%s: %s); running its items one by one",
                self.name,
                len(items),
                type(exc).__name__,
                exc,
            )
            for item in items:
                if item.future.done():
                    continue
                if item.deadline is not None and time.monotonic() >= item.deadline:
                    item.future.set_exception(DeadlineExceededError(f"{self.name}: deadline passed"))
                    continue
                await self._execute(key, [item])
            return
        compute_ms = (time.monotonic() - started) * 1e3
        if self._on_batch is not None:
            self._on_batch(len(items), compute_ms)
        for item, result in zip(items, results, strict=True):
            if not item.future.done():
                stats = BatchStats((started - item.enqueued_at) * 1e3, compute_ms, len(items))
                item.future.set_result(Completed(result, stats))


def _abandoned(item: _Item[P, R]) -> bool:
    """Nobody waits for the item's result: its future is done (cancelled) or its deadline passed."""
    return item.future.done() or (item.deadline is not None and time.monotonic() >= item.deadline)


def _stop_check(items: list[_Item[P, R]]) -> StopCheck:
    """The runner's ``stop()``: True once every item of the batch is abandoned. Reads only a future's
    state and the clock, so it is safe to call from the worker thread."""
    return lambda: all(_abandoned(item) for item in items)
