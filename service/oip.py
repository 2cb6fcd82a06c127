"""inference.GRPCInferenceService: the Open Inference Protocol (KServe v2) front door, on the same port
and the same dynamic batchers as camserve.v1.ExplainService.

A thin front door over the data plane (``camserve.service.dataplane``), like kserve's servicers:
``oip_codec`` translates requests and answers (described there); validation, admission, logging
(one ``infer id=...`` line per request), in-flight tracking, draining and the status mapping happen
in the data plane, once for both APIs.

Imported by the server when it starts, never by ``camserve.service.server`` at import time: see
``camserve.inference``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from operator import attrgetter

import grpc

import camserve
from camserve.config import CamserveConfig
from camserve.inference import grpc_service_pb2 as ip
from camserve.inference import grpc_service_pb2_grpc as ip_grpc
from camserve.runtime import device_kind
from camserve.service.dataplane import DataPlane, FrontDoor, Outcome, answer_or_abort
from camserve.service.errors import abort_with_status, clip
from camserve.service.models import ServedModel
from camserve.service.oip_codec import (
    MODEL_VERSION,
    check_version,
    decode_infer_request,
    encode_infer_response,
    model_config,
    model_metadata,
)
from camserve.service.streams import answer_in_completion_order

INFERENCE_SERVICE = ip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "camserve"
#: Protocol extensions served (Triton's names).
EXTENSIONS = ("model_configuration", "parameters")


class InferenceServicer(ip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, config: CamserveConfig) -> None:
        self.dataplane = dataplane
        self.config = config

    # -- health and metadata ----------------------------------------------------------------------

    async def ServerLive(
        self, request: ip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> ip.ServerLiveResponse:
        return ip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: ip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> ip.ServerReadyResponse:
        return ip.ServerReadyResponse(ready=self.dataplane.ready)

    async def ModelReady(
        self, request: ip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelReadyResponse:
        """Ready when the model (and version) is served here and the server is not shutting down;
        an unknown model is simply not ready."""
        ready = request.name in self.dataplane.models.names and request.version in ("", MODEL_VERSION)
        return ip.ModelReadyResponse(ready=ready and self.dataplane.ready)

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
            await abort_with_status(context, exc)

    async def ModelConfig(
        self, request: ip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelConfigResponse:
        try:
            model = self._model(request.name, request.version)
            service = self.config.service
            kind = instance_kind(self.config.runtime.device)
            config = model_config(model, service.max_batch_size, service.max_queue_delay_ms, kind)
            return ip.ModelConfigResponse(config=config)
        except Exception as exc:
            await abort_with_status(context, exc)

    def _model(self, name: str, version: str) -> ServedModel:
        model = self.dataplane.model(name)
        check_version(version, model)
        return model

    # -- inference --------------------------------------------------------------------------------

    async def ModelInfer(
        self, request: ip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> ip.ModelInferResponse:
        return await answer_or_abort(await self._infer(request, context), context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[ip.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ip.ModelStreamInferResponse]:
        """Requests are answered as they complete; a failed one gets ``error_message`` ("CODE: message")
        and an ``infer_response`` with its id and model, and the stream goes on."""

        async def answer(request: ip.ModelInferRequest) -> ip.ModelStreamInferResponse:
            outcome = await self._infer(request, context)
            if outcome.response is None:
                return ip.ModelStreamInferResponse(
                    error_message=f"{outcome.code.name}: {outcome.message}",
                    infer_response=ip.ModelInferResponse(
                        model_name=clip(request.model_name),
                        model_version=clip(request.model_version),
                        id=request.id,  # whole: clients match answers by it
                    ),
                )
            return ip.ModelStreamInferResponse(infer_response=outcome.response)

        async for response in answer_in_completion_order(request_iterator, answer, context):
            yield response

    def _infer(
        self, request: ip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> Awaitable[Outcome[ip.ModelInferResponse]]:
        return self.dataplane.handle(INFER, request, context.time_remaining())


INFER: FrontDoor[ip.ModelInferRequest, ip.ModelInferResponse] = FrontDoor(
    "infer", attrgetter("id"), attrgetter("model_name"), decode_infer_request, encode_infer_response
)


_INSTANCE_KIND = {
    "auto": ip.ModelInstanceGroup.KIND_AUTO,
    "cpu": ip.ModelInstanceGroup.KIND_CPU,
    "cuda": ip.ModelInstanceGroup.KIND_GPU,
}


def instance_kind(device: str) -> ip.ModelInstanceGroup.Kind:
    """The instance group kind a ModelConfig reports for ``runtime.device`` ('cuda:N' is a GPU)."""
    return _INSTANCE_KIND[device_kind(device)]


def add_inference_service(server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    ip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
