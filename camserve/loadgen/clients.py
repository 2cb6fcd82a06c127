"""One asynchronous caller per API: ``await call(n)`` sends the workload's request ``n`` and returns the
status code name of the answer ("OK", "NOT_FOUND", ...). The callers never raise for a failed call: a
benchmark counts failures by status code."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from camserve.loadgen.workload import Workload
from camserve.wire import channel_credentials, token_metadata

Call = Callable[[int], Awaitable[str]]
EXPLAIN = "/camserve.v1.ExplainService/Explain"
EXPLAIN_STREAM = "/camserve.v1.ExplainService/ExplainStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """Where the requests go and how to authenticate (picklable: it travels to the client processes)."""

    address: str
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    timeout_s: float = 60.0


def open_channel(target: Target) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (TLS when asked for or any certificate file is given)."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # one connection per channel: each closed-loop client is its own connection, as real clients are
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if not (target.tls or target.ca_file or target.cert_file or target.key_file):
        return grpc.aio.insecure_channel(target.address, options=options)
    credentials = channel_credentials(target.ca_file, target.cert_file, target.key_file)
    return grpc.aio.secure_channel(target.address, credentials, options=options)


def _identity(data: bytes) -> bytes:
    return data


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _status_of_stream_answer(data: bytes) -> tuple[str, str]:
    """(request id, status code name) of a serialised ExplainResponse."""
    from camserve.v1 import camserve_pb2 as pb

    response = pb.ExplainResponse.FromString(data)
    if response.HasField("error") and response.error.code:
        return response.id, _CODE_NAMES.get(response.error.code, "UNKNOWN")
    return response.id, "OK"


class Unary:
    """Explain or ModelInfer: one unary call per request."""

    def __init__(self, channel: grpc.aio.Channel, workload: Workload, target: Target) -> None:
        method = MODEL_INFER if workload.api == "oip" else EXPLAIN
        # The answer is not decoded: the benchmark measures the server, and decoding maps costs CPU.
        self._call = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        self._requests = workload.requests
        self._metadata = token_metadata(target.token) or None
        self._timeout = target.timeout_s

    async def __call__(self, n: int) -> str:
        try:
            await self._call(
                self._requests[n % len(self._requests)], timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"


class Stream:
    """ExplainStream: one long stream; requests carry ids, answers (in completion order) are matched
    by id. A failed request is an answer with ``error`` set; a broken stream fails what is pending."""

    def __init__(self, channel: grpc.aio.Channel, workload: Workload, target: Target) -> None:
        self._open = channel.stream_stream(
            EXPLAIN_STREAM, request_serializer=_identity, response_deserializer=_identity
        )
        self._requests = workload.requests
        self._metadata = token_metadata(target.token) or None
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._ids = itertools.count()
        self._stream: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __call__(self, n: int) -> str:
        from camserve.v1 import camserve_pb2 as pb

        if self._stream is None:
            self._stream = self._open(metadata=self._metadata)
            self._reader = asyncio.ensure_future(self._read())
        request_id = str(next(self._ids))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        # Serialised messages concatenate as a merge: the pre-built request plus its id.
        data = self._requests[n % len(self._requests)] + pb.ExplainRequest(id=request_id).SerializeToString()
        try:
            await self._stream.write(data)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            self._pending.pop(request_id, None)
            return "UNAVAILABLE"
        return await future

    async def _read(self) -> None:
        code = "OK"
        try:
            async for data in self._stream:
                request_id, status = _status_of_stream_answer(data)
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(status)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_result(code if code != "OK" else "UNAVAILABLE")
            self._pending.clear()
            self._stream = None

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.done_writing()
        if self._reader is not None:
            await self._reader


def make_call(channel: grpc.aio.Channel, workload: Workload, target: Target) -> Unary | Stream:
    return Stream(channel, workload, target) if workload.api == "stream" else Unary(channel, workload, target)
