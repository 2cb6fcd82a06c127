"""Where the data plane checks and decodes a request: a small unary request on the event loop (the hop
to a worker thread cost more than the work), everything else in a worker thread within the server's
pixel budget — with the same answer either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camserve.config import CamserveConfig
from camserve.defaults import INLINE_DECODE_PIXELS, INLINE_REQUEST_BYTES
from camserve.service import dataplane as dataplane_module
from camserve.service.cancellation import RequestScope, enter_scope
from camserve.service.dataplane import DataPlane
from camserve.service.models import ModelRegistry, PixelBudget
from camserve.service.servicer import EXPLAIN
from camserve.v1 import camserve_pb2 as pb
from tests.service.service_helpers import MODEL, png_bytes


@pytest.fixture(scope="module")
def registry(models_root: Path) -> Callable[[], ModelRegistry]:
    """A fresh registry per call: a closed batcher takes no more work."""
    config = CamserveConfig.load(env={})
    return lambda: ModelRegistry.load({MODEL: models_root / MODEL}, config)


def _request(pixels: np.ndarray) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model=MODEL, methods=["gradcam"], images=[pb.Image(encoded=png_bytes(pixels), targets=[-1, 3])]
    )


def _answer(
    make_registry: Callable[[], ModelRegistry],
    request: pb.ExplainRequest,
    request_bytes: int | None,
    monkeypatch,
) -> tuple[pb.ExplainResponse, list[str], int]:
    """The answer, what ran in worker threads (function names) and how many budget holds there were."""
    hops: list[str] = []
    holds = 0
    to_thread = asyncio.to_thread
    hold = PixelBudget.hold

    async def recorded_to_thread(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn.__name__)
        return await to_thread(fn, *args)

    def counted_hold(self: PixelBudget, pixels: int, field: str) -> Any:
        nonlocal holds
        holds += 1
        return hold(self, pixels, field)

    monkeypatch.setattr(dataplane_module.asyncio, "to_thread", recorded_to_thread)
    monkeypatch.setattr(PixelBudget, "hold", counted_hold)

    registry = make_registry()

    async def call() -> pb.ExplainResponse:
        registry.start()
        try:
            enter_scope(RequestScope(None, request_bytes=request_bytes))  # what the interceptor sets
            outcome = await DataPlane(registry, CamserveConfig.load(env={})).handle(EXPLAIN, request, None)
            assert outcome.response is not None, outcome.message
            return outcome.response
        finally:
            await registry.close()

    response = asyncio.run(call())
    monkeypatch.undo()
    return response, hops, holds


def _maps(response: pb.ExplainResponse) -> list[bytes]:
    return [m.data.data for image in response.images for m in image.maps]


def test_a_small_unary_request_is_checked_and_decoded_on_the_event_loop(registry, digit_pixels, monkeypatch):
    request = _request(digit_pixels[0])
    size = request.ByteSize()
    assert size <= INLINE_REQUEST_BYTES
    inline, hops, holds = _answer(registry, request, size, monkeypatch)
    assert hops == [] and holds == 0  # no worker thread, outside the pixel budget
    # a stream's request (size unknown) and a big one: both in one worker thread, within the budget
    for request_bytes in (None, INLINE_REQUEST_BYTES + 1):
        threaded, hops, holds = _answer(registry, request, request_bytes, monkeypatch)
        assert hops == ["_admit_and_decode"] and holds == 1
        assert _maps(threaded) == _maps(inline)
        assert list(threaded.images[0].target_ids) == list(inline.images[0].target_ids)


def test_a_small_request_with_big_images_is_decoded_in_a_worker_thread(registry, monkeypatch):
    side = int(INLINE_DECODE_PIXELS**0.5) + 1  # one row of pixels more than the loop decodes
    flat = np.zeros((side, side, 3), dtype=np.uint8)  # compresses to a few hundred bytes
    request = _request(flat)
    assert request.ByteSize() <= INLINE_REQUEST_BYTES
    _, hops, holds = _answer(registry, request, request.ByteSize(), monkeypatch)
    assert hops == ["decode"] and holds == 1  # checked on the loop, decoded in a thread within the budget
