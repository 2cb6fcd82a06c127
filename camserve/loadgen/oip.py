"""``camserve bench --api oip`` against an Open Inference Protocol server that is not camserve — Triton
Inference Server on a repository from ``camserve export --triton-repository``: what the model takes
(``ModelMetadata``) and requests that feed the graph's own inputs, ``images`` (float32 [1,3,H,W],
preprocessed here as camserve does) and ``targets`` (int64 [1,T]), asking only for the maps of the
chosen methods when the graph returns maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from camserve.errors import CamserveError, InvalidArgumentError
from camserve.loadgen.clients import Target
from camserve.service.security import channel_credentials, token_metadata

MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
METADATA_TIMEOUT_S = 10.0
PAD_TARGET = -1


@dataclass(frozen=True)
class GraphModel:
    """A served graph's tensors: name -> shape with the batch dimension (-1: variable)."""

    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]

    @property
    def takes_graph_inputs(self) -> bool:
        return {"images", "targets"} <= set(self.inputs)


def model_metadata(target: Target, model: str) -> GraphModel:
    """The model's inputs and outputs from the server's ``ModelMetadata``."""
    from camserve.inference import grpc_service_pb2 as ip

    if target.tls or target.ca_file or target.cert_file or target.key_file:
        credentials = channel_credentials(target.ca_file, target.cert_file, target.key_file)
        channel = grpc.secure_channel(target.address, credentials)
    else:
        channel = grpc.insecure_channel(target.address)
    with channel:
        call = channel.unary_unary(
            MODEL_METADATA,
            request_serializer=ip.ModelMetadataRequest.SerializeToString,
            response_deserializer=ip.ModelMetadataResponse.FromString,
        )
        try:
            reply = call(
                ip.ModelMetadataRequest(name=model),
                timeout=METADATA_TIMEOUT_S,
                metadata=token_metadata(target.token) or None,
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgumentError("--model", f"the server does not serve {model!r}") from None
            raise CamserveError(f"--server: ModelMetadata of {model!r} failed ({code})") from None
    return GraphModel(
        {t.name: tuple(int(d) for d in t.shape) for t in reply.inputs},
        tuple(t.name for t in reply.outputs),
    )


def map_output(method: str) -> str:
    """The maps graph's output of a method: ``gradcam++`` -> ``maps_gradcampp``."""
    return "maps_" + method.replace("+", "p").replace("-", "_")


def graph_request(
    model: str,
    graph: GraphModel,
    methods: Sequence[str],
    targets: Sequence[int],
    images: np.ndarray,
) -> bytes:
    """A ModelInferRequest for one preprocessed image (float32 [1,3,H,W]). Targets: the given ones
    (default: the top class), padded with -1 to the model's fixed target slots if it has them."""
    from camserve.inference import grpc_service_pb2 as ip

    wanted = list(targets) or [PAD_TARGET]
    slots = graph.inputs["targets"][-1]
    if slots > 0:
        if len(wanted) > slots:
            raise InvalidArgumentError(
                "--target", f"the model takes {slots} targets per image, got {len(wanted)}"
            )
        wanted += [PAD_TARGET] * (slots - len(wanted))
    request = ip.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(np.ascontiguousarray(images, dtype="<f4").tobytes())
    request.inputs.add(name="targets", datatype="INT64", shape=[1, len(wanted)])
    request.raw_input_contents.append(np.asarray([wanted], dtype="<i8").tobytes())
    if any(name.startswith("maps_") for name in graph.outputs):  # a maps graph: only the maps asked for
        for method in methods:
            name = map_output(method)
            if name not in graph.outputs:
                raise InvalidArgumentError(
                    "--method", f"{model!r} has no output {name} (it has {graph.outputs})"
                )
            request.outputs.add(name=name)
    return request.SerializeToString()
