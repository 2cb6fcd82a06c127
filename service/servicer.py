"""camserve.v1.ExplainService: requests in, work items to the models' batchers, answers out.

Failures become gRPC statuses through ``camserve.service.errors.status_for`` only. Every Explain
request (unary or inside a stream) gets one log line on the ``camserve.service.requests`` logger:
model, images, methods, queue ms, compute ms, batch size and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from camserve.config import ExplainOptions
from camserve.service import metrics
from camserve.service.batcher import Completed
from camserve.service.codec import DecodedRequest, decode_request, encode_image_result, model_info
from camserve.service.errors import UnavailableError, status_for
from camserve.service.models import ModelRegistry, ServedModel
from camserve.service.runner import ImageResult, ImageWork, batch_key
from camserve.service.streams import answer_in_completion_order
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

request_log = logging.getLogger("camserve.service.requests")
DEADLINE_SLACK_S = 0.05
_PLAIN = re.compile(r"^[A-Za-z0-9._,+:/@-]{1,200}$")


@dataclass
class RequestRecord:
    """What the request log line says about one Explain request."""

    id: str
    model: str
    images: int
    methods: str
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 0
    started: float = field(default_factory=time.monotonic)
    kind: str = "explain"  # the log line's first word: "explain" (camserve.v1) or "infer" (inference.*)
    # The request's methods once checked against the model (metric labels; never raw client strings).
    method_labels: tuple[str, ...] = ()

    def log(self, code: grpc.StatusCode, served: bool, error: str = "") -> None:
        total_ms = (time.monotonic() - self.started) * 1e3
        request_log.info(
            "%s id=%s model=%s images=%d methods=%s queue_ms=%.2f compute_ms=%.2f batch_size=%d "
            "total_ms=%.2f status=%s%s",
            self.kind,
            _logfmt(self.id),
            _logfmt(self.model),
            self.images,
            _logfmt(self.methods),
            self.queue_ms,
            self.compute_ms,
            self.batch_size,
            total_ms,
            code.name,
            f" error={_logfmt(error)}" if error else "",
        )
        label = self.model if served else "unknown"
        metrics.REQUESTS.labels(label, code.name).inc()
        if code is grpc.StatusCode.OK:
            metrics.IMAGES.labels(label).inc(self.images)
            metrics.REQUEST_SECONDS.labels(label).observe(total_ms / 1e3)
            metrics.QUEUE_SECONDS.labels(label).observe(self.queue_ms / 1e3)
            metrics.BATCH_SIZE.labels(label).observe(self.batch_size)
        metrics.observe_request(label, self.method_labels, code.name, self.images, self.queue_ms, total_ms)


def _logfmt(value: str) -> str:
    """A logfmt value: bare when it is plain, else JSON-quoted (client strings cannot break the line)."""
    if not value:
        return "-"
    return value if _PLAIN.match(value) else json.dumps(value)


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    def __init__(self, models: ModelRegistry, defaults: ExplainOptions, max_batch_size: int) -> None:
        self.models = models
        self.defaults = defaults
        self.max_batch_size = max_batch_size
        self.draining = False  # set on shutdown: new Explain requests get UNAVAILABLE
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no Explain request is in progress."""
        await self._idle.wait()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request of another API on this server (inference.GRPCInferenceService) as in
        progress, so that shutdown waits for it too."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        response, code, message = await self._explain_logged(request, context.time_remaining())
        if response is None:
            await context.abort(code, message)
        return response

    async def ExplainStream(
        self, request_iterator: AsyncIterator[pb.ExplainRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExplainResponse]:
        async def answer(request: pb.ExplainRequest) -> pb.ExplainResponse:
            response, code, message = await self._explain_logged(request, context.time_remaining())
            if response is None:
                response = pb.ExplainResponse(
                    id=request.id, model=request.model, error=pb.Error(code=code.value[0], message=message)
                )
            return response

        async for response in answer_in_completion_order(request_iterator, answer, context):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(m, self.max_batch_size) for m in self.models])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            return model_info(self.models.get(request.name), self.max_batch_size)
        except Exception as exc:
            code, message = status_for(exc)
        await context.abort(code, message)

    # -- explain ------------------------------------------------------------------------------------

    async def _explain_logged(
        self, request: pb.ExplainRequest, time_remaining: float | None
    ) -> tuple[pb.ExplainResponse | None, grpc.StatusCode, str]:
        """The response, or None with the status code and message of the failure; logs the request."""
        record = RequestRecord(request.id, request.model, len(request.images), ",".join(request.methods))
        served = False
        self._in_flight += 1
        self._idle.clear()
        try:
            model = self.models.get(request.model)
            served = True
            response = await self._explain(request, model, time_remaining, record)
        except asyncio.CancelledError:
            # gRPC cancels the handler both when the client cancels and when the deadline passes (its
            # timer may fire a little before this clock says so).
            elapsed = time.monotonic() - record.started
            expired = time_remaining is not None and elapsed >= time_remaining - DEADLINE_SLACK_S
            record.log(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED, served)
            raise
        except Exception as exc:
            code, message = status_for(exc)
            record.log(code, served, message)
            return None, code, message
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        record.log(grpc.StatusCode.OK, served)
        return response, grpc.StatusCode.OK, ""

    async def _explain(
        self,
        request: pb.ExplainRequest,
        model: ServedModel,
        time_remaining: float | None,
        record: RequestRecord,
    ) -> pb.ExplainResponse:
        if self.draining:
            raise UnavailableError("server is shutting down; retry on another replica")
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        # Decoding PNG/JPEG bytes takes real time: keep it off the event loop.
        decoded: DecodedRequest = await asyncio.to_thread(decode_request, request, model, self.defaults)
        record.methods = ",".join(decoded.works[0].methods)
        record.method_labels = decoded.works[0].methods
        completed = await run_works(model, decoded.works, decoded.options, deadline, record)
        if decoded.output.overlay:
            images = await asyncio.to_thread(_encode_all, completed, decoded)
        else:
            images = _encode_all(completed, decoded)
        return pb.ExplainResponse(id=request.id, model=model.name, images=images)


async def run_works(
    model: ServedModel,
    works: Sequence[ImageWork],
    options: ExplainOptions,
    deadline: float | None,
    record: RequestRecord,
) -> list[Completed[ImageResult]]:
    """Queue one request's images on the model's batcher and wait for all of them (one result per
    work, in order); fills the record's queue, compute and batch figures."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, work in enumerate(works):
        groups[batch_key(work, options)].append(i)
    futures: dict[int, asyncio.Future[Completed[ImageResult]]] = {}
    try:
        for key, indices in groups.items():
            submitted = model.batcher.submit(key, [works[i] for i in indices], deadline)
            futures.update(zip(indices, submitted, strict=True))
        completed = await asyncio.gather(*(futures[i] for i in range(len(works))))
    except BaseException:
        # A full queue for one group, a failed image or a cancelled call: drop the rest of it.
        for future in futures.values():
            future.cancel()
        raise
    record.queue_ms = max(c.stats.queue_ms for c in completed)
    record.compute_ms = max(c.stats.compute_ms for c in completed)
    record.batch_size = max(c.stats.batch_size for c in completed)
    return completed


def _encode_all(
    completed: list[Completed[ImageResult]], decoded: DecodedRequest
) -> list[pb.ImageExplanation]:
    works: list[ImageWork] = decoded.works
    return [encode_image_result(c.value, w, decoded.output) for c, w in zip(completed, works, strict=True)]
