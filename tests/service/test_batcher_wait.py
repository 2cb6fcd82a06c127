"""The batcher waits for company only when its recent load says company comes: a lone client's
requests run at once, a burst like the last one is awaited up to max_queue_delay_ms."""

from __future__ import annotations

import asyncio
import time

from camserve.service.batcher import DynamicBatcher

DELAY_MS = 300.0  # long, so that "did not wait" is unmistakable on a loaded machine


def doubling(key: object, payloads: list[int], stop: object = None) -> list[int]:
    return [2 * p for p in payloads]


def test_a_lone_client_does_not_wait_for_the_delay_once_its_load_is_seen():
    async def main() -> tuple[list[float], list[int]]:
        batcher = DynamicBatcher(doubling, max_batch_size=8, max_queue_delay_ms=DELAY_MS, max_queue_size=16)
        batcher.start()
        waits, sizes = [], []
        for i in range(4):  # one request at a time, as one closed-loop client sends them
            start = time.monotonic()
            (done,) = await asyncio.gather(*batcher.submit("k", [i]))
            waits.append(time.monotonic() - start)
            sizes.append(done.stats.batch_size)
            assert done.value == 2 * i
        await batcher.close()
        return waits, sizes

    waits, sizes = asyncio.run(asyncio.wait_for(main(), 30))
    assert sizes == [1, 1, 1, 1]
    assert waits[0] >= DELAY_MS / 1e3 * 0.9  # nothing seen yet: the first batch hopes for a full one
    assert all(w < DELAY_MS / 1e3 / 2 for w in waits[1:])  # then a batch of one is what comes


def test_after_a_burst_a_partial_batch_waits_for_the_rest():
    async def main() -> list[int]:
        batcher = DynamicBatcher(doubling, max_batch_size=8, max_queue_delay_ms=DELAY_MS, max_queue_size=16)
        batcher.start()
        first = await asyncio.gather(*batcher.submit("k", [0, 1, 2, 3]))  # queued at once: a batch of 4
        early = batcher.submit("k", [4])
        await asyncio.sleep(DELAY_MS / 1e3 / 4)  # the rest of the next burst comes a little later
        late = batcher.submit("k", [5, 6, 7])
        second = await asyncio.gather(*early, *late)
        await batcher.close()
        return [r.stats.batch_size for r in first + second]

    sizes = asyncio.run(asyncio.wait_for(main(), 30))
    assert sizes == [4] * 8
