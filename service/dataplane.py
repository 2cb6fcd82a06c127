"""The one request path of both gRPC APIs (kserve's DataPlane under thin servicers).

A front door (``servicer.py`` for camserve.v1, ``oip.py`` for the Open Inference Protocol) only
translates: its codec turns the wire message into a :class:`ServiceRequest` (checked with the
validators of ``camserve.config``; images not decoded yet) and the results back into its answer.
Everything else happens here, once for both:

model lookup -> draining -> decode into a ServiceRequest -> admission by cost (``admission.py``, before
any image is decoded or any graph runs) -> decoding (in a worker thread; a small unary request is
checked and decoded on the event loop, where it costs less than the hop) -> the model's batcher ->
the answer; plus the in-flight count that shutdown waits for, the status mapping
(``errors.status_for``) and one log line per request on ``camserve.service.requests`` (model, images,
methods, queue / compute / total ms, batch size, status) with the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from camserve.config import CamserveConfig, ExplainOptions, check_service_config
from camserve.defaults import INLINE_DECODE_PIXELS, INLINE_REQUEST_BYTES, MAX_ECHO_CHARS
from camserve.errors import InvalidArgumentError
from camserve.methods.base import check_target_kinds, method_class
from camserve.methods.target_kinds import Target
from camserve.service import metrics
from camserve.service.admission import AnswerShape, RequestCost, admit, request_cost
from camserve.service.batch_runner import ImageResult, ImageWork, batch_key, names_images
from camserve.service.batcher import Completed
from camserve.service.cancellation import current_scope
from camserve.service.errors import MAX_STATUS_CHARS, SHUTTING_DOWN, UnavailableError, clip, status_for
from camserve.service.models import ModelRegistry, ServedModel

request_log = logging.getLogger("camserve.service.requests")
DEADLINE_SLACK_S = 0.05
_PLAIN = re.compile(r"^[A-Za-z0-9._,+:/@-]{1,200}$")

Response = TypeVar("Response")


@dataclass(frozen=True)
class PendingImage:
    """One image of a request before decoding: its targets, its decoded size and how to decode it."""

    targets: tuple[int | Target, ...]  # checked; ints: the output kind's default kind
    pixels: int  # decode cost in pixels (camserve.encoded_images.ImageHeader.cost for encoded images)
    # load(budgeted) -> float32 [3,H,W], preprocessed as the model expects; budgeted: within the
    # server's pixel budget (ServiceRequest.decode)
    load: Callable[[bool], np.ndarray]


@dataclass(frozen=True)
class ServiceRequest:
    """The one internal request both front doors decode into."""

    images: list[PendingImage]
    methods: tuple[str, ...]
    options: ExplainOptions
    answer: AnswerShape
    wire: Any = None  # what the front door needs to write its answer (its codec's own type)
    timeout_s: float | None = None  # a deadline the request itself asks for (OIP's "timeout")

    def cost(self, model: ServedModel) -> RequestCost:
        return request_cost(
            [len(image.targets) for image in self.images],
            self.pixels,
            self.methods,
            self.options,
            self.answer,
            model.manifest,
        )

    def check_target_kinds(self, model: ServedModel) -> None:
        """Methods that explain class logits only are refused with other target kinds before this
        request is batched with others (``methods.base.check_target_kinds``)."""
        spec = model.manifest.target_spec()
        kinds = {
            t.kind if isinstance(t, Target) else spec.kinds[0] for image in self.images for t in image.targets
        }
        check_target_kinds([method_class(m)() for m in self.methods], kinds, spec.output_kind)

    @property
    def pixels(self) -> int:
        return sum(image.pixels for image in self.images)

    def decode(self, budgeted: bool = True) -> list[ImageWork]:
        """Decode the images. Decoding in worker threads holds the server's pixel budget; a small
        request decoded on the event loop does not (``budgeted=False``): the loop decodes one at a
        time, so those add at most INLINE_DECODE_PIXELS to the bound."""
        request = next(_REQUEST_NUMBERS) if any(names_images(i.targets) for i in self.images) else None
        return [
            ImageWork(image.load(budgeted), image.targets, self.methods, request, index)
            for index, image in enumerate(self.images)
        ]


_REQUEST_NUMBERS = itertools.count()  # ImageWork.request: requests whose targets name their images


WireRequest = TypeVar("WireRequest")


def _never(request: ServiceRequest) -> bool:
    return False


@dataclass(frozen=True)
class FrontDoor(Generic[WireRequest, Response]):
    """What the data plane needs of an API: how to read its requests and write its answers."""

    kind: str  # the log line's first word: "explain" (camserve.v1), "infer" (inference.*)
    request_id: Callable[[WireRequest], str]
    model_name: Callable[[WireRequest], str]
    decode: Callable[[WireRequest, ServedModel, ExplainOptions], ServiceRequest]
    encode: Callable[[WireRequest, ServedModel, ServiceRequest, list[ImageWork], list[ImageResult]], Response]
    encode_in_thread: Callable[[ServiceRequest], bool] = _never  # answers that take real time to write


@dataclass(frozen=True)
class Outcome(Generic[Response]):
    """A request's answer, or None with the status code and message of its failure."""

    response: Response | None
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


async def answer_or_abort(outcome: Outcome[Response], context: grpc.aio.ServicerContext) -> Response:
    """A unary call's answer, or the call ended with the outcome's status."""
    if outcome.response is None:
        await context.abort(outcome.code, outcome.message)
    assert outcome.response is not None
    return outcome.response


@dataclass
class RequestRecord:
    """What the request log line says about one request."""

    id: str
    model: str
    kind: str  # the log line's first word: "explain" (camserve.v1) or "infer" (inference.*)
    images: int = 0
    methods: str = ""
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_size: int = 0
    started: float = field(default_factory=time.monotonic)
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
            f" error={_logfmt(error, MAX_STATUS_CHARS)}" if error else "",
        )
        metrics.observe_request(
            self.model if served else "unknown",
            self.method_labels,
            code.name,
            self.images,
            self.queue_ms,
            total_ms,
            self.batch_size,
        )


def _logfmt(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A logfmt value: bare when it is plain, else JSON-quoted (client strings cannot break the line)."""
    if not value:
        return "-"
    value = clip(value, limit)  # a 1 MiB request id must not make a 1 MiB log line
    return value if _PLAIN.match(value) else json.dumps(value)


class DataPlane:
    """Models, defaults, limits, draining and the in-flight count shared by every front door."""

    def __init__(self, models: ModelRegistry, config: CamserveConfig) -> None:
        check_service_config(config.service)
        self.models = models
        self.config = config
        self.defaults = config.explain
        self.draining = False  # set on shutdown: new requests get UNAVAILABLE
        self.stopping = False  # set when shutdown ends what is still in flight (UNAVAILABLE)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return not self.draining

    def model(self, name: str) -> ServedModel:
        """The served model ``name``; NotFoundError naming it (cut to a readable length) otherwise."""
        return self.models.get(name)

    async def wait_idle(self) -> None:
        """Return once no request is in progress."""
        await self._idle.wait()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request as in progress while the block runs, so that shutdown waits for it."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def handle(
        self, door: FrontDoor[WireRequest, Response], wire: WireRequest, time_remaining: float | None
    ) -> Outcome[Response]:
        """One request from start to answer: the answer, or the failure's status; logs the request."""
        record = RequestRecord(door.request_id(wire), door.model_name(wire), door.kind)
        served = False
        with self.in_flight():
            try:
                model = self.model(record.model)
                served = True
                response = await self._handle(door, wire, model, time_remaining, record)
            except asyncio.CancelledError:
                # gRPC cancels the handler both when the client cancels and when the deadline passes
                # (its timer may fire a little before this clock says so).
                # Shutdown cancels what is left after the grace period; the call ends UNAVAILABLE.
                elapsed = time.monotonic() - record.started
                expired = time_remaining is not None and elapsed >= time_remaining - DEADLINE_SLACK_S
                if self.stopping:
                    record.log(grpc.StatusCode.UNAVAILABLE, served, "grace period over: " + SHUTTING_DOWN)
                else:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    record.log(code, served)
                raise
            except Exception as exc:
                code, message = status_for(exc)
                record.log(code, served, message)
                return Outcome(None, code, message)
        record.log(grpc.StatusCode.OK, served)
        return Outcome(response)

    async def _handle(
        self,
        door: FrontDoor[WireRequest, Response],
        wire: WireRequest,
        model: ServedModel,
        time_remaining: float | None,
        record: RequestRecord,
    ) -> Response:
        if self.draining:
            raise UnavailableError(SHUTTING_DOWN)
        started = time.monotonic()
        if _small_unary_call():
            # checked on the event loop (a hop to a thread costs more), decoded there too when its
            # images are small
            request = self._admit(door, wire, model, record)
            if request.pixels <= INLINE_DECODE_PIXELS:
                works = request.decode(budgeted=False)
            else:
                works = await asyncio.to_thread(request.decode)
        else:  # one hop off the event loop: checking reads headers and tensors, decoding takes real time
            request, works = await asyncio.to_thread(self._admit_and_decode, door, wire, model, record)
        limits = [s for s in (time_remaining, request.timeout_s) if s is not None]
        deadline = started + min(limits) if limits else None
        completed = await run_works(model, works, request.options, deadline, record)
        results = [c.value for c in completed]
        if door.encode_in_thread(request):
            return await asyncio.to_thread(door.encode, wire, model, request, works, results)
        return door.encode(wire, model, request, works, results)

    def _admit_and_decode(
        self,
        door: FrontDoor[WireRequest, Response],
        wire: WireRequest,
        model: ServedModel,
        record: RequestRecord,
    ) -> tuple[ServiceRequest, list[ImageWork]]:
        """Check the request, admit it by its cost (before any image is decoded), then decode it."""
        request = self._admit(door, wire, model, record)
        return request, request.decode()

    def _admit(
        self,
        door: FrontDoor[WireRequest, Response],
        wire: WireRequest,
        model: ServedModel,
        record: RequestRecord,
    ) -> ServiceRequest:
        """The request checked against the model and admitted by its cost (nothing decoded yet)."""
        request = door.decode(wire, model, self.defaults)
        request.check_target_kinds(model)
        record.images = len(request.images)
        record.methods = ",".join(request.methods)
        record.method_labels = request.methods
        admit(request.cost(model), self.config.service)
        return request


def _check_one_batch(works: Sequence[ImageWork], groups: int, max_batch_size: int) -> None:
    """A request whose targets name its images (``*_image``) must run as one batch."""
    if groups > 1:
        counts = sorted({len(w.targets) for w in works})
        raise InvalidArgumentError(
            "images",
            f"targets that name another image of the request (dot_image, cosine_image) need every image "
            f"to have the same number of targets (they run as one batch); got {counts}",
        )
    if len(works) > max_batch_size:
        raise InvalidArgumentError(
            "images",
            f"{len(works)} images: a request whose targets name its images runs as one batch, of at most "
            f"{max_batch_size} images (the server's max batch size)",
        )


def _small_unary_call() -> bool:
    """Whether the current call is unary and its request at most INLINE_REQUEST_BYTES on the wire
    (the interceptor records the size; streams and direct calls have none)."""
    scope = current_scope()
    size = None if scope is None else scope.request_bytes
    return size is not None and size <= INLINE_REQUEST_BYTES


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
    if works and works[0].request is not None:
        _check_one_batch(works, len(groups), model.batcher.max_batch_size)
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
