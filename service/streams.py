"""Bidirectional streams answered in completion order, shared by camserve.v1 and the KServe v2 API.

Backpressure comes from the request iterator: the server's interceptor
(``camserve.service.interceptors``) hands out a stream's next request only while fewer than
``service.stream_max_unread`` of its answers are unsent, so the tasks and queued answers here stay
within that bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from camserve.service.errors import status_for

Request = TypeVar("Request")
Response = TypeVar("Response")


async def answer_in_completion_order(
    request_iterator: AsyncIterator[Request],
    answer: Callable[[Request], Awaitable[Response]],
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[Response]:
    """Start ``answer(request)`` for each request as it arrives and yield the responses as they finish.

    ``answer`` turns its own failures into a response, so one bad request never ends the stream; a failure
    to read the stream aborts it with the mapped status. When the client goes away, queued work is dropped.
    """
    answers: asyncio.Queue[Response | None] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()

    async def run(request: Request) -> None:
        answers.put_nowait(await answer(request))

    async def read() -> None:
        try:
            async for request in request_iterator:
                task = asyncio.create_task(run(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.wait(set(pending))
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await answers.get()) is not None:
            yield response
        await asyncio.wait({reader})
        failure = reader.exception()
        if failure is not None:
            code, message = status_for(failure)
            await context.abort(code, message)
    finally:
        # The client went away or the stream failed: drop this stream's queued work.
        reader.cancel()
        for task in list(pending):
            task.cancel()
