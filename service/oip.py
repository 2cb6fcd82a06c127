"""inference.GRPCInferenceService: the Open Inference Protocol (KServe v2) front door, on the same port
and the same dynamic batchers as camserve.v1.ExplainService.

Requests and answers are described in ``camserve.service.oip_codec``. Failures become gRPC statuses
through ``camserve.service.errors.status_for`` only; every ModelInfer request (unary or inside a
stream) gets one ``infer id=...`` line on the ``camserve.service.requests`` logger and counts in the
metrics like an Explain request.

Imported by the server when it starts, never by ``camserve.service.server`` at import time: see
``camserve.inference``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

import camserve
from camserve.config import CamserveConfig
from camserve.inference import grpc_service_pb2 as ip
from camserve.inference import grpc_service_pb2_grpc as ip_grpc
from camserve.service.errors import UnavailableError, status_for
from camserve.service.models import ModelRegistry, ServedModel
from camserve.service.oip_codec import (
    MODEL_VERSION,
    check_version,
    decode_infer_request,
    encode_infer_response,
    model_config,
    model_metadata,
)
from camserve.service.servicer import DEADLINE_SLACK_S, ExplainServicer, RequestRecord, run_works
from camserve.service.streams import answer_in_completion_order

INFERENCE_SERVICE = ip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "camserve"
#: Protocol extensions served (Triton's names).
EXTENSIONS = ("model_configuration", "parameters")


class InferenceServicer(ip_grpc.GRPCInferenceServiceServicer):
    """Shares the models, the draining flag and the in-flight count with ``explain``."""

    def __init__(self, models: ModelRegistry, explain: ExplainServicer, config: CamserveConfig) -> None:
        self.models = models
        self.explain = explain
        self.config = config

    # -- health and metadata ----------------------------------------------------------------------

    async def ServerLive(
        self, request: ip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> ip.ServerLiveResponse:
        return ip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: ip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> ip.ServerReadyResponse:
        return ip.ServerReadyResponse(ready=not self.explain.draining)

    async def ModelReady(
        self, request: ip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelReadyResponse:
        """Ready when the model (and version) is served here and the server is not shutting down;
        an unknown model is simply not ready."""
        ready = request.name in self.models.names and request.version in ("", MODEL_VERSION)
        return ip.ModelReadyResponse(ready=ready and not self.explain.draining)

    async def ServerMetadata(
        self, request: ip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ip.ServerMetadataResponse:
        return ip.ServerMetadataResponse(
            name=SERVER_NAME, version=camserve.__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: ip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelMetadataResponse:
        try:
            model = self._model(request.name, request.version)
            return model_metadata(model)
        except Exception as exc:
            code, message = status_for(exc)
        await context.abort(code, message)

    async def ModelConfig(
        self, request: ip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelConfigResponse:
        try:
            model = self._model(request.name, request.version)
            service = self.config.service
            kind = _INSTANCE_KIND[self.config.runtime.device]
            config = model_config(model, service.max_batch_size, service.max_queue_delay_ms, kind)
            return ip.ModelConfigResponse(config=config)
        except Exception as exc:
            code, message = status_for(exc)
        await context.abort(code, message)

    def _model(self, name: str, version: str) -> ServedModel:
        model = self.models.get(name)
        check_version(version, model)
        return model

    # -- inference --------------------------------------------------------------------------------

    async def ModelInfer(
        self, request: ip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelInferResponse:
        response, code, message = await self._infer_logged(request, context.time_remaining())
        if response is None:
            await context.abort(code, message)
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[ip.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ip.ModelStreamInferResponse]:
        """Requests are answered as they complete; a failed one gets ``error_message`` ("CODE: message")
        and an ``infer_response`` with its id and model, and the stream goes on."""

        async def answer(request: ip.ModelInferRequest) -> ip.ModelStreamInferResponse:
            response, code, message = await self._infer_logged(request, context.time_remaining())
            if response is None:
                return ip.ModelStreamInferResponse(
                    error_message=f"{code.name}: {message}",
                    infer_response=ip.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
                    ),
                )
            return ip.ModelStreamInferResponse(infer_response=response)

        async for response in answer_in_completion_order(request_iterator, answer, context):
            yield response

    async def _infer_logged(
        self, request: ip.ModelInferRequest, time_remaining: float | None
    ) -> tuple[ip.ModelInferResponse | None, grpc.StatusCode, str]:
        """The response, or None with the status code and message of the failure; logs the request."""
        record = RequestRecord(request.id, request.model_name, 0, "", kind="infer")
        served = False
        with self.explain.in_flight():
            try:
                model = self.models.get(request.model_name)
                served = True
                response = await self._infer(request, model, time_remaining, record)
            except asyncio.CancelledError:
                elapsed = time.monotonic() - record.started
                expired = time_remaining is not None and elapsed >= time_remaining - DEADLINE_SLACK_S
                record.log(
                    grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED, served
                )
                raise
            except Exception as exc:
                code, message = status_for(exc)
                record.log(code, served, message)
                return None, code, message
        record.log(grpc.StatusCode.OK, served)
        return response, grpc.StatusCode.OK, ""

    async def _infer(
        self,
        request: ip.ModelInferRequest,
        model: ServedModel,
        time_remaining: float | None,
        record: RequestRecord,
    ) -> ip.ModelInferResponse:
        if self.explain.draining:
            raise UnavailableError("server is shutting down; retry on another replica")
        started = time.monotonic()
        # Checking and preprocessing (PIXELS are resized) take real time: keep them off the event loop.
        decoded = await asyncio.to_thread(decode_infer_request, request, model, self.explain.defaults)
        record.images = len(decoded.works)
        record.methods = ",".join(decoded.works[0].methods)
        record.method_labels = decoded.works[0].methods
        limits = [s for s in (time_remaining, decoded.timeout_s) if s is not None]
        deadline = started + min(limits) if limits else None
        completed = await run_works(model, decoded.works, decoded.options, deadline, record)
        return encode_infer_response(request, model, decoded, [c.value for c in completed])


_INSTANCE_KIND = {
    "auto": ip.ModelInstanceGroup.KIND_AUTO,
    "cpu": ip.ModelInstanceGroup.KIND_CPU,
    "cuda": ip.ModelInstanceGroup.KIND_GPU,
}


def add_inference_service(server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    ip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
