"""camserve.v1.ExplainService: a thin front door over the data plane (``camserve.service.dataplane``).

It only translates: ``codec.decode_request`` turns an ExplainRequest into the one internal request,
``codec.encode_response`` turns the results into an ExplainResponse. Validation, admission, logging,
in-flight tracking, draining and the status mapping happen in the data plane, once for both APIs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from operator import attrgetter

import grpc

from camserve.service.codec import decode_request, encode_response, model_info
from camserve.service.dataplane import DataPlane, FrontDoor, Outcome, ServiceRequest, answer_or_abort
from camserve.service.errors import abort_with_status, clip
from camserve.service.streams import answer_in_completion_order
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    def __init__(self, dataplane: DataPlane, max_batch_size: int) -> None:
        self.dataplane = dataplane
        self.max_batch_size = max_batch_size

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainResponse:
        return await answer_or_abort(await self._explain(request, context), context)

    async def ExplainStream(
        self, request_iterator: AsyncIterator[pb.ExplainRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExplainResponse]:
        async def answer(request: pb.ExplainRequest) -> pb.ExplainResponse:
            outcome = await self._explain(request, context)
            if outcome.response is None:
                return pb.ExplainResponse(
                    id=request.id,
                    model=clip(request.model),  # the id stays whole: clients match answers by it
                    error=pb.Error(code=outcome.code.value[0], message=outcome.message),
                )
            return outcome.response

        async for response in answer_in_completion_order(request_iterator, answer, context):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self.dataplane.models
        return pb.ListModelsResponse(models=[model_info(m, self.max_batch_size) for m in models])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            return model_info(self.dataplane.model(request.name), self.max_batch_size)
        except Exception as exc:
            await abort_with_status(context, exc)

    def _explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> Awaitable[Outcome[pb.ExplainResponse]]:
        return self.dataplane.handle(EXPLAIN, request, context.time_remaining())


def _has_overlays(request: ServiceRequest) -> bool:
    """PNG overlays take real time to encode: off the event loop."""
    return request.answer.overlay


EXPLAIN: FrontDoor[pb.ExplainRequest, pb.ExplainResponse] = FrontDoor(
    "explain", attrgetter("id"), attrgetter("model"), decode_request, encode_response, _has_overlays
)
