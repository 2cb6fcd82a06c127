"""The pieces behind the hostile-load limits, without a server: the pixel budget, the request scope,
the batcher's stop() check, the wrong-token limiter and the peer address parsing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from camserve.errors import ResourceExhaustedError
from camserve.service.batcher import DynamicBatcher
from camserve.service.cancellation import (
    RequestCancelledError,
    RequestScope,
    check_request_alive,
    enter_scope,
)
from camserve.service.errors import DeadlineExceededError
from camserve.service.interceptors import peer_host
from camserve.service.models import PixelBudget
from camserve.service.security import FailedAuthLimiter

WAIT_S = 10.0


def test_the_pixel_budget_lets_decodes_in_one_after_another_and_refuses_what_can_never_fit():
    budget = PixelBudget(100)
    with pytest.raises(
        ResourceExhaustedError, match=r"images\[3\]: decoding takes 101 pixels .* at most 100"
    ):
        with budget.hold(101, "images[3]"):
            pass
    inside, order = threading.Event(), []

    def second() -> None:
        with budget.hold(60, "b"):
            order.append("b")

    with budget.hold(60, "a"):
        inside.set()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        assert order == [] and budget.in_use == 60  # b waits: 60 + 60 > 100
        order.append("a")
    thread.join(WAIT_S)
    assert order == ["a", "b"] and budget.in_use == 0


def test_a_decode_waiting_for_the_budget_gives_up_when_its_call_is_over():
    budget = PixelBudget(10)
    failures: list[BaseException] = []

    def waiter(scope: RequestScope) -> None:
        enter_scope(scope)
        try:
            with budget.hold(10, "images[0].encoded"):
                pass
        except BaseException as exc:
            failures.append(exc)

    with budget.hold(10, "holder"):
        expired = threading.Thread(target=waiter, args=(RequestScope(time.monotonic() + 0.1),))
        cancelled_scope = RequestScope(None)
        cancelled = threading.Thread(target=waiter, args=(cancelled_scope,))
        expired.start(), cancelled.start()
        time.sleep(0.2)
        cancelled_scope.ended.set()
        expired.join(WAIT_S), cancelled.join(WAIT_S)
    kinds = sorted(type(e).__name__ for e in failures)
    assert kinds == ["DeadlineExceededError", "RequestCancelledError"]
    assert all("the wait to decode images[0].encoded" in str(e) for e in failures)
    assert budget.in_use == 0


def test_outside_a_call_nothing_is_checked_and_inside_the_stage_is_named():
    check_request_alive("anything")  # no scope (in-process use): no-op
    scope = RequestScope(time.monotonic() - 1.0)
    with pytest.raises(DeadlineExceededError, match="deadline passed during decoding images\\[1\\]"):
        scope.check("decoding images[1]")
    ended = RequestScope(None)
    ended.ended.set()
    with pytest.raises(RequestCancelledError):
        ended.check("x")
    assert RequestScope.from_time_remaining(None).stopped() is False


def test_the_batcher_tells_its_runner_to_stop_once_every_item_is_abandoned():
    seen: list[bool] = []
    started = threading.Event()

    def runner(key: object, payloads: list[int], stop) -> list[int]:
        started.set()
        seen.append(stop())
        deadline = time.monotonic() + WAIT_S
        while not stop():  # the runner's steps, each asking stop() first
            assert time.monotonic() < deadline, "stop() never turned true"
            time.sleep(0.01)
        seen.append(stop())
        raise RequestCancelledError("stopped")

    async def scenario() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            runner, max_batch_size=2, max_queue_delay_ms=0.0, max_queue_size=4
        )
        batcher.start()
        futures = batcher.submit("k", [1, 2])
        assert await asyncio.to_thread(started.wait, WAIT_S)
        futures[0].cancel()
        await asyncio.sleep(0.1)
        assert seen == [False]  # one item still waited for
        futures[1].cancel()
        await batcher.close()

    asyncio.run(scenario())
    assert seen == [False, True]


def test_wrong_tokens_empty_a_bucket_per_address_that_refills_one_per_interval():
    now = [0.0]
    limiter = FailedAuthLimiter(burst=3, interval_s=2.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after_s("ipv4:10.0.0.1") == 0.0
        limiter.record_failure("ipv4:10.0.0.1")
    assert limiter.retry_after_s("ipv4:10.0.0.1") == pytest.approx(2.0)
    assert limiter.retry_after_s("ipv4:10.0.0.2") == 0.0  # other addresses are not affected
    now[0] = 1.5
    assert limiter.retry_after_s("ipv4:10.0.0.1") == pytest.approx(0.5)
    now[0] = 2.0
    assert limiter.retry_after_s("ipv4:10.0.0.1") == 0.0
    limiter.record_failure("ipv4:10.0.0.1")
    assert limiter.retry_after_s("ipv4:10.0.0.1") == pytest.approx(2.0)
    now[0] = 100.0  # a full bucket again, never more than the burst
    for _ in range(3):
        limiter.record_failure("ipv4:10.0.0.1")
    assert limiter.retry_after_s("ipv4:10.0.0.1") == pytest.approx(2.0)


class _Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:54321", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:40000", "ipv6:[::1]"),
        ("unix:/tmp/camserve.sock", "unix:/tmp/camserve.sock"),
    ],
)
def test_the_peer_address_drops_only_the_port(peer, host):
    assert peer_host(_Context(peer)) == host
