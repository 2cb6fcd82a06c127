"""``camserve bench --api oip`` against an Open Inference Protocol server that is not camserve — Triton
Inference Server on a repository from ``camserve export --triton-repository``: what the model takes
(``ModelMetadata``) and requests that feed the graph's own inputs, ``images`` (float32 [1,3,H,W],
preprocessed here as camserve does) and ``targets`` (int64 [1,T]), asking only for the maps of the
chosen methods when the graph is the maps graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from camserve.errors import CamserveError, InvalidArgumentError
from camserve.loadgen.clients import Target
from camserve.wire import open_channel, token_metadata

if TYPE_CHECKING:
    from camserve.modeldir import Manifest

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

    channel = open_channel(
        target.address,
        tls=target.tls,
        ca_file=target.ca_file,
        cert_file=target.cert_file,
        key_file=target.key_file,
    )
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


def map_outputs(manifest: Manifest, methods: Sequence[str]) -> list[str] | None:
    """The maps graph's outputs of ``methods`` (from the manifest); None for a model without one (the
    explain graph: every output is asked for)."""
    if manifest.maps is None:
        return None
    by_method = dict(zip(manifest.maps.methods, manifest.maps.outputs[2:], strict=True))
    missing = [m for m in methods if m not in by_method]
    if missing:
        have = ", ".join(manifest.maps.methods)
        raise InvalidArgumentError("--method", f"the maps graph has no {', '.join(missing)} (it has {have})")
    return [by_method[m] for m in methods]


def graph_request(
    model: str,
    graph: GraphModel,
    outputs: Sequence[str] | None,
    targets: Sequence[int],
    images: np.ndarray,
) -> bytes:
    """A ModelInferRequest for one preprocessed image (float32 [1,3,H,W]) asking for ``outputs`` (None:
    all). Targets: the given ones (default: the top class), padded with -1 to the model's fixed target
    slots if it has them."""
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
    if "target_kinds" in graph.inputs:  # graphs exported with target kinds: class ids are kind 0, logit
        request.inputs.add(name="target_kinds", datatype="INT64", shape=[1, len(wanted)])
        request.raw_input_contents.append(np.zeros((1, len(wanted)), dtype="<i8").tobytes())
    for name in outputs or ():
        if name not in graph.outputs:
            raise InvalidArgumentError("--model", f"{model!r} has no output {name} (it has {graph.outputs})")
        request.outputs.add(name=name)
    return request.SerializeToString()
