"""Cross-cutting concerns of every call, applied as one server interceptor (before any servicer runs):

* malformed request bytes: grpc.aio parses a request before the handler runs, and a parse failure would
  end the call as UNKNOWN with a traceback. Requests are parsed here instead; bytes that are not the
  method's message end the call with INVALID_ARGUMENT and one log line (in a stream: the stream ends).
* the call's ``RequestScope`` (``camserve.service.cancellation``): its deadline, and an event set as soon
  as the handler returns or is cancelled, so that threads and batches working for it can stop.
* backpressure on bidirectional streams (each request gets one answer: ExplainStream, ModelStreamInfer):
  at most ``stream_max_unread`` requests are read beyond the answers the client has taken. An answer
  counts as taken once gRPC has sent it (a client that stops reading stops the sends through HTTP/2
  flow control); until then the server reads no more of that stream's requests, so a client that
  never reads holds at most that many answers in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc

from camserve.errors import InvalidArgumentError
from camserve.service import metrics
from camserve.service.cancellation import RequestScope, enter_scope
from camserve.service.errors import SHUTTING_DOWN
from camserve.service.heap import TRIMMER

request_log = logging.getLogger("camserve.service.requests")


class MalformedRequest:
    """What the parser hands on instead of a message when the bytes cannot be parsed."""

    __slots__ = ("size", "reason")

    def __init__(self, size: int, reason: str) -> None:
        self.size = size
        self.reason = reason


class SizedRequest(NamedTuple):
    """A unary call's parsed request and its size on the wire (the handler unwraps it)."""

    message: Any
    size: int


def _safe_parser(parse: Callable[[bytes], Any] | None, sized: bool = False) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def parse_or_mark(data: bytes) -> Any:
        TRIMMER.note_request(len(data))
        try:
            message = parse(data)
        except Exception as exc:  # DecodeError, and whatever else a parser raises on hostile bytes
            return MalformedRequest(len(data), f"{type(exc).__name__}: {str(exc)[:200]}")
        return SizedRequest(message, len(data)) if sized else message

    return parse_or_mark


def _refuse_malformed(method: str, malformed: MalformedRequest) -> InvalidArgumentError:
    request_log.info(
        "malformed method=%s bytes=%d status=INVALID_ARGUMENT error=%r",
        method,
        malformed.size,
        malformed.reason,
    )
    metrics.REQUESTS.labels("unknown", "INVALID_ARGUMENT").inc()
    return InvalidArgumentError(
        "request", f"{malformed.size} bytes are not a valid {method.rsplit('/', 1)[-1]} request message"
    )


class ActiveCalls:
    """The calls being handled (their tasks), so that shutdown ends each one still open with UNAVAILABLE
    and a log line: left to grpc's ``server.stop``, they would end CANCELLED, unlogged, and clients
    are told to retry only UNAVAILABLE. Once ``closing``, a call that starts is refused the same way."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def end_all(self, timeout_s: float) -> int:
        """Refuse new calls and end the open ones with UNAVAILABLE (waiting up to ``timeout_s`` for
        their status to go out); returns how many were open."""
        self.closing = True
        open_calls = set(self.tasks)
        for task in open_calls:
            task.cancel()
        if open_calls:
            await asyncio.wait(open_calls, timeout=timeout_s)
        return len(open_calls)

    @contextlib.asynccontextmanager
    async def track(self, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
        """Run a call's handler inside: while closing, it ends with UNAVAILABLE instead."""
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.closing:
                await _refuse_shutting_down(context, method)
            yield
        except asyncio.CancelledError:
            if not self.closing:
                raise  # the client cancelled, or the deadline passed
            await _refuse_shutting_down(context, method)
        finally:
            self.tasks.discard(task)


async def _refuse_shutting_down(context: grpc.aio.ServicerContext, method: str) -> None:
    request_log.info("shutdown method=%s status=UNAVAILABLE error=%r", method, SHUTTING_DOWN)
    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


class RequestGuardInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring; install it after the token check (which must parse nothing)."""

    def __init__(self, stream_max_unread: int) -> None:
        self.stream_max_unread = stream_max_unread
        self.calls = ActiveCalls()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return guard_handler(handler, handler_call_details.method, self.stream_max_unread, self.calls)


def guard_handler(handler: Any, method: str, stream_max_unread: int, calls: ActiveCalls | None = None) -> Any:
    """``handler`` (a grpc RpcMethodHandler) with the safe parser and the call scope around its behaviour;
    ``calls`` tracks it for shutdown."""
    calls = calls if calls is not None else ActiveCalls()
    if not hasattr(handler, "_replace"):  # not grpc's own handler tuple: leave it alone
        return handler
    # unary requests carry their wire size to the call scope (small ones are decoded on the event loop)
    parser = _safe_parser(handler.request_deserializer, sized=handler.unary_unary is not None)
    if handler.unary_unary is not None:
        guarded = _unary(handler.unary_unary, method, calls)
        return handler._replace(request_deserializer=parser, unary_unary=guarded)
    if handler.unary_stream is not None:
        return handler._replace(
            request_deserializer=parser, unary_stream=_unary_stream(handler.unary_stream, method, calls)
        )
    if handler.stream_unary is not None:
        return handler._replace(
            request_deserializer=parser, stream_unary=_stream_unary(handler.stream_unary, method, calls)
        )
    return handler._replace(
        request_deserializer=parser,
        stream_stream=_stream_stream(handler.stream_stream, method, stream_max_unread, calls),
    )


def _enter(context: grpc.aio.ServicerContext, request_bytes: int | None = None) -> RequestScope:
    scope = RequestScope.from_time_remaining(context.time_remaining())
    scope.request_bytes = request_bytes
    enter_scope(scope)
    return scope


async def _checked(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise _refuse_malformed(method, request)
        yield request


def _unary(
    behavior: Callable[..., Awaitable[Any]], method: str, calls: ActiveCalls
) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(_refuse_malformed(method, request)))
        size = None
        if isinstance(request, SizedRequest):
            request, size = request
        scope = _enter(context, size)
        try:
            async with calls.track(context, method):
                return await behavior(request, context)
        finally:
            scope.ended.set()
            TRIMMER.call_ended()

    return guarded


def _unary_stream(behavior: Callable[..., Any], method: str, calls: ActiveCalls) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write (health's Watch)
        return _unary(behavior, method, calls)

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(_refuse_malformed(method, request)))
        scope = _enter(context)
        try:
            async with calls.track(context, method):
                async for response in behavior(request, context):
                    yield response
        finally:
            scope.ended.set()
            TRIMMER.call_ended()

    return guarded


def _stream_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, calls: ActiveCalls
) -> Callable[..., Awaitable[Any]]:
    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        scope = _enter(context)
        try:
            async with calls.track(context, method):
                return await behavior(_checked(requests, method), context)
        finally:
            scope.ended.set()
            TRIMMER.call_ended()

    return guarded


class _Unread:
    """Requests read minus answers taken, on one stream; the reader waits while it is at the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.changed = asyncio.Event()

    async def paced(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        iterator = requests.__aiter__()
        while True:
            while self.count >= self.limit:
                self.changed.clear()
                await self.changed.wait()
            try:
                request = await iterator.__anext__()
            except StopAsyncIteration:
                return
            self.count += 1
            yield request

    def taken(self) -> None:
        self.count -= 1
        self.changed.set()


def _stream_stream(
    behavior: Callable[..., Any], method: str, max_unread: int, calls: ActiveCalls
) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write
        return _stream_unary(behavior, method, calls)

    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        scope = _enter(context)
        unread = _Unread(max_unread)
        try:
            async with calls.track(context, method):
                async for response in behavior(unread.paced(_checked(requests, method)), context):
                    yield response  # returns once gRPC has sent it and asks for the next
                    unread.taken()
        finally:
            scope.ended.set()
            TRIMMER.call_ended()

    return guarded


def with_precheck(handler: Any, check: Callable[[grpc.aio.ServicerContext], Awaitable[None]]) -> Any:
    """``handler`` (a grpc RpcMethodHandler) whose behaviour first awaits ``check(context)``, which may
    abort the call."""
    kind = next(
        k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k)
    )
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):

        async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for response in behavior(request, context):
                yield response

        return handler._replace(**{kind: checked_stream})

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        return await behavior(request, context)

    return handler._replace(**{kind: checked})


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """The caller's address without its port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1")."""
    peer = context.peer() or "unknown"
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and host.count(":") >= 1 else peer
