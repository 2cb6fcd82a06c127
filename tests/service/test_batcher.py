"""The dynamic batcher with a fake runner: coalescing, delay, queue limit, deadlines, cancellation,
per-item failure isolation, key separation and draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from camserve.errors import ResourceExhaustedError
from camserve.service.batcher import DynamicBatcher
from camserve.service.errors import DeadlineExceededError, UnavailableError

WAIT_S = 5.0  # upper bound for every await in these tests


class RecordingRunner:
    """Doubles its payloads; records every batch; can be held closed to let the queue fill."""

    def __init__(self, fail_on: object = None, hold: bool = False) -> None:
        self.batches: list[tuple[object, list[object]]] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, key: object, payloads: list[object], stop: object = None) -> list[object]:
        self.entered.set()
        assert self.gate.wait(WAIT_S), "test never released the runner"
        self.batches.append((key, list(payloads)))
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"bad payload {self.fail_on!r}")
        return [p * 2 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT_S * 2))


async def wait_entered(runner: RecordingRunner) -> None:
    assert await asyncio.to_thread(runner.entered.wait, WAIT_S)


def make(runner, **kw) -> DynamicBatcher:
    settings = dict(max_batch_size=4, max_queue_delay_ms=20.0, max_queue_size=16, name="test")
    settings.update(kw)
    return DynamicBatcher(runner, **settings)


def test_queued_items_from_many_requests_are_coalesced_up_to_max_batch_size():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=4, max_queue_delay_ms=100.0)
        batcher.start()
        # All nine are queued before the scheduler looks: two full batches, then the last item alone.
        first = batcher.submit("k", [0])
        more = batcher.submit("k", [1, 2, 3]) + batcher.submit("k", [4, 5, 6, 7, 8])
        await wait_entered(runner)
        runner.gate.set()
        results = await asyncio.gather(*first, *more)
        await batcher.close()
        return runner.batches, results

    batches, results = run(main())
    assert [r.value for r in results] == [2 * i for i in range(9)]
    assert [len(p) for _, p in batches] == [4, 4, 1]
    assert [p for _, p in batches][0] == [0, 1, 2, 3]
    assert [r.stats.batch_size for r in results] == [4] * 8 + [1]


def test_a_partial_batch_waits_for_max_queue_delay_then_runs():
    async def main():
        runner = RecordingRunner()
        batcher = make(runner, max_batch_size=8, max_queue_delay_ms=60.0)
        batcher.start()
        start = time.monotonic()
        (future,) = batcher.submit("k", [1])
        await asyncio.sleep(0.02)
        late = batcher.submit("k", [2])  # arrives within the delay: joins the same batch
        result = await future
        elapsed = time.monotonic() - start
        await asyncio.gather(*late)
        await batcher.close()
        return runner.batches, result, elapsed

    batches, result, elapsed = run(main())
    assert batches == [("k", [1, 2])]
    assert 0.055 <= elapsed < 1.0
    assert result.stats.queue_ms >= 55


def test_a_full_batch_does_not_wait_for_the_delay():
    async def main():
        runner = RecordingRunner()
        batcher = make(runner, max_batch_size=3, max_queue_delay_ms=2000.0)
        batcher.start()
        start = time.monotonic()
        results = await asyncio.gather(*batcher.submit("k", [1, 2, 3]))
        await batcher.close()
        return time.monotonic() - start, results

    elapsed, results = run(main())
    assert elapsed < 1.0
    assert [r.value for r in results] == [2, 4, 6]


def test_full_queue_answers_at_once_with_resource_exhausted_and_takes_all_or_nothing():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=1, max_queue_delay_ms=0.0, max_queue_size=3)
        batcher.start()
        running = batcher.submit("k", [0])
        await wait_entered(runner)  # item 0 runs (out of the queue); 3 slots free
        queued = batcher.submit("k", [1, 2])
        with pytest.raises(ResourceExhaustedError, match="queue full"):
            batcher.submit("k", [3, 4])  # needs 2 slots, 1 free: rejected whole
        queued += batcher.submit("k", [5])
        with pytest.raises(ResourceExhaustedError, match="queue full"):
            batcher.submit("other", [6])
        with pytest.raises(ResourceExhaustedError, match="at most 3"):
            batcher.submit("k", [7, 8, 9, 10])
        runner.gate.set()
        results = await asyncio.gather(*running, *queued)
        await batcher.close()
        return runner.batches, results

    batches, results = run(main())
    assert [r.value for r in results] == [0, 2, 4, 10]
    assert [p for _, p in batches] == [[0], [1], [2], [5]]


def test_items_whose_deadline_passed_are_dropped_before_running():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=4, max_queue_delay_ms=0.0)
        batcher.start()
        running = batcher.submit("k", [0])
        await wait_entered(runner)
        expiring = batcher.submit("k", [1], deadline=time.monotonic() + 0.05)
        keeping = batcher.submit("k", [2], deadline=time.monotonic() + 60)
        await asyncio.sleep(0.1)
        runner.gate.set()
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            await expiring[0]
        results = await asyncio.gather(*running, *keeping)
        await batcher.close()
        return runner.batches, results

    batches, results = run(main())
    assert [p for _, p in batches] == [[0], [2]]
    assert [r.value for r in results] == [0, 4]


def test_cancelled_items_are_dropped_and_free_their_queue_slot():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=4, max_queue_delay_ms=0.0, max_queue_size=2)
        batcher.start()
        running = batcher.submit("k", [0])
        await wait_entered(runner)
        cancelled = batcher.submit("k", [1, 2])
        assert batcher.queued == 2
        for future in cancelled:
            future.cancel()
        await asyncio.sleep(0)
        assert batcher.queued == 0
        kept = batcher.submit("k", [3])  # the freed slots take new work
        runner.gate.set()
        results = await asyncio.gather(*running, *kept)
        await batcher.close()
        return runner.batches, results

    batches, results = run(main())
    assert [p for _, p in batches] == [[0], [3]]
    assert [r.value for r in results] == [0, 6]


def test_one_failing_item_fails_alone_and_the_rest_of_its_batch_succeeds():
    async def main():
        runner = RecordingRunner(fail_on=13, hold=True)
        batcher = make(runner, max_batch_size=4, max_queue_delay_ms=0.0)
        batcher.start()
        first = batcher.submit("k", [0])
        await wait_entered(runner)
        futures = batcher.submit("k", [1, 13, 3])
        runner.gate.set()
        outcomes = await asyncio.gather(*first, *futures, return_exceptions=True)
        await batcher.close()
        return runner.batches, outcomes

    batches, outcomes = run(main())
    assert [o.value for o in outcomes if not isinstance(o, Exception)] == [0, 2, 6]
    assert isinstance(outcomes[2], ValueError) and "13" in str(outcomes[2])
    # the failed batch [1, 13, 3], then each of its items alone
    assert [p for _, p in batches] == [[0], [1, 13, 3], [1], [13], [3]]


def test_items_with_different_keys_never_share_a_batch():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=8, max_queue_delay_ms=0.0)
        batcher.start()
        first = batcher.submit("a", [0])
        await wait_entered(runner)
        rest = batcher.submit("a", [1]) + batcher.submit("b", [2]) + batcher.submit("a", [3])
        rest += batcher.submit("b", [4])
        runner.gate.set()
        await asyncio.gather(*first, *rest)
        await batcher.close()
        return runner.batches

    batches = run(main())
    assert batches == [("a", [0]), ("a", [1, 3]), ("b", [2, 4])]


def test_close_runs_queued_work_then_refuses_new_work():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner, max_batch_size=2, max_queue_delay_ms=10_000.0)
        batcher.start()
        futures = batcher.submit("k", [1])  # would wait 10 s for a fuller batch
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(UnavailableError):
            batcher.submit("k", [2])
        runner.gate.set()
        results = await asyncio.gather(*futures)
        await closing
        return results

    (result,) = run(main())
    assert result.value == 2


def test_the_event_loop_stays_responsive_while_a_batch_runs():
    async def main():
        runner = RecordingRunner(hold=True)
        batcher = make(runner)
        batcher.start()
        futures = batcher.submit("k", [1])
        await wait_entered(runner)
        ticks = 0
        for _ in range(5):  # the runner blocks its thread, not the loop
            await asyncio.sleep(0.001)
            ticks += 1
        runner.gate.set()
        await asyncio.gather(*futures)
        await batcher.close()
        return ticks

    assert run(main()) == 5
