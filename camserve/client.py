"""The Python client of the gRPC service: the same ``explain`` call and ExplainResult as the in-process
:class:`camserve.Explainer`, computed by a camserve server.

>>> from camserve import Client
>>> with Client("127.0.0.1:50051") as client:
...     result = client.explain(["cat.png"], methods=["gradcam"], targets=[[-1, -2]])
>>> result.maps["gradcam"].shape                 # [N, T, H, W]
(1, 2, 64, 64)

Image files, PIL images and uint8 pixels travel as PNG/JPEG bytes (the server preprocesses them
exactly as the Explainer does); float32 tensors travel as they are.

A server with TLS, mTLS or a bearer token (see docs/operations.md):

>>> Client("camserve.example:50051", ca_file="ca.pem", cert_file="client.pem", key_file="client.key",
...        token=open("token.txt").read().strip())
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from google.protobuf.message import Message

from camserve.config import ExplainOptions, check_options, parse_output_size
from camserve.defaults import DEFAULT_METHODS, IMAGE_FORMATS, MAX_MESSAGE_BYTES
from camserve.encoded_images import image_format
from camserve.errors import CamserveError, InvalidArgumentError, NotFoundError
from camserve.images import IMAGE_MODES, ImageLike, preprocess
from camserve.methods.target_kinds import (
    KIND_CODE,
    OUTPUT_KINDS,
    TARGET_KINDS,
    Target,
    TargetSpec,
    as_target,
    build_table,
)
from camserve.methods.targets import parse_targets
from camserve.result import ExplainResult, Prediction
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import array_to_tensor, open_channel, tensor_to_array, token_metadata


class ServerError(CamserveError):
    """The server answered a call with an error status; ``code`` is its grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.grpc_code = code.name
        super().__init__(f"server: {code.name}: {details}")


class Client:
    """A connection to a camserve server.

    address   "host:port"
    model     the model to use when a call names none; None: the server's only model
    options   ExplainOptions sent with every call that passes none; None: the server's defaults
    timeout_s deadline of each call
    tls       use TLS (verified against the system's root certificates unless ca_file is given);
              implied by any of the certificate files
    ca_file   PEM certificate(s) that verify the server (a private CA or a self-signed certificate)
    cert_file, key_file   the client's own certificate and key, for servers that require them (mTLS)
    token     bearer token sent as ``authorization: Bearer <token>`` with every call
    server_name  the name to check the server's certificate against, when the address is not it
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        model: str | None = None,
        options: ExplainOptions | None = None,
        timeout_s: float | None = 60.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        *,
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
        server_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.options = options
        self._model = model
        self._metadata = token_metadata(token)
        self._channel = open_channel(
            address,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = pb_grpc.ExplainServiceStub(self._channel)
        self._models: dict[str, pb.ModelInfo] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_models(self) -> list[pb.ModelInfo]:
        reply = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return list(reply.models)

    def model_info(self, model: str | None = None) -> pb.ModelInfo:
        """The model's input size, preprocessing, classes and supported methods (cached)."""
        name = model or self._model
        if name is None:
            served = self.list_models()
            if len(served) != 1:
                names = ", ".join(m.name for m in served)
                raise InvalidArgumentError("model", f"the server serves several models ({names}); name one")
            self._model = name = served[0].name
            self._models[name] = served[0]
        if name not in self._models:
            self._models[name] = self._call(self._stub.GetModel, pb.GetModelRequest(name=name))
        return self._models[name]

    @property
    def supported_methods(self) -> list[str]:
        """The methods the default model (``model`` given to the constructor) supports."""
        return list(self.model_info().supported_methods)

    def preprocess(self, images: ImageLike | Sequence[ImageLike], model: str | None = None) -> torch.Tensor:
        """Images -> float32 [N,3,H,W] model input, as the server and the Explainer preprocess them."""
        info = self.model_info(model)
        return preprocess(images, list(info.input_size), list(info.mean), list(info.std))

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        methods: str | Sequence[str] = DEFAULT_METHODS,
        targets: object = None,
        options: ExplainOptions | None = None,
        model: str | None = None,
    ) -> ExplainResult:
        """As :meth:`camserve.Explainer.explain`; ``options`` None: the client's, else the server's."""
        info = self.model_info(model)
        input_size, mean, std = list(info.input_size), list(info.mean), list(info.std)
        batch = preprocess(images, input_size, mean, std)  # validates like the Explainer; kept for overlays
        sources = _image_sources(images, batch)
        rows = target_rows(targets, batch.shape[0], model_spec(info))
        if rows is None:
            table = parse_targets(targets, batch.shape[0], info.num_classes).tolist()
            for source, row in zip(sources, table, strict=True):
                source.targets.extend(row)
        else:
            for source, row in zip(sources, rows, strict=True):
                source.target_specs.extend(target_message(t) for t in row)
        request = pb.ExplainRequest(
            model=info.name,
            methods=[methods] if isinstance(methods, str) else list(methods),
            images=sources,
        )
        options = options if options is not None else self.options
        if options is not None:
            # as the Explainer does: at most the model's classes as predictions
            options = dataclasses.replace(
                options, topk_predictions=min(options.topk_predictions, info.num_classes)
            )
            _set_options(request, check_options(options))  # refused here as the server would
        reply: pb.ExplainResponse = self._call(self._stub.Explain, request)
        return _result(reply, info, batch.numpy())

    def _call(self, method: Callable[..., Any], request: Message) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"server {self.address}: {exc.details()}") from None
            raise ServerError(exc.code(), exc.details() or "") from None


def model_spec(info: pb.ModelInfo) -> TargetSpec:
    """The targets a served model takes (a server from before target kinds: a classifier)."""
    kind = info.output_kind or "classification"
    shape = tuple(info.output_shape) or (info.num_classes,)
    return TargetSpec(kind, info.num_classes, shape, (int(info.input_size[1]), int(info.input_size[2])))


def target_rows(targets: object, num_images: int, spec: TargetSpec) -> list[list[int | Target]] | None:
    """Rows of :class:`Target`s (or dicts with its fields, or ints) per image, checked as the server
    checks them (``build_table``); None when ``targets`` holds no Target (plain class ids)."""
    if isinstance(targets, Target | dict):
        targets = [[targets]]
    if not isinstance(targets, list | tuple) or not any(
        isinstance(entry, Target | dict) for row in targets if isinstance(row, list | tuple) for entry in row
    ):
        return None
    rows = [[as_target(entry) for entry in row] for row in targets]
    build_table(rows, spec, num_images)
    return rows * num_images if len(rows) == 1 else rows


def target_message(target: int | Target) -> pb.Target:
    """One target as camserve.v1's Target; a mask travels as raw uint8 weights (round(255 w))."""
    if not isinstance(target, Target):
        return pb.Target(class_id=int(target))
    message = pb.Target(kind=KIND_CODE[target.kind])  # type: ignore[arg-type]
    if target.kind not in OUTPUT_KINDS["embedding"]:
        message.class_id = int(target.class_id)
    if target.box is not None:
        x1, y1, x2, y2 = (float(v) for v in target.box)
        message.box.CopyFrom(pb.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    if target.mask is not None:
        weights = np.asarray(target.mask, dtype=np.float32)
        if weights.size and not 0.0 <= float(weights.min()) <= float(weights.max()) <= 1.0:
            raise InvalidArgumentError("targets.mask", "the wire carries mask weights in [0, 1]")
        height, width = weights.shape
        data = np.rint(weights * 255).astype(np.uint8).tobytes()
        message.mask.raw.CopyFrom(pb.RawMask(height=height, width=width, data=data))
    if target.vector is not None:
        message.vector.extend(np.asarray(target.vector, dtype=np.float32).reshape(-1).tolist())
    if target.image is not None:
        message.image = int(target.image)
    return message


def _image_sources(images: ImageLike | Sequence[ImageLike], batch: torch.Tensor) -> list[pb.Image]:
    """One ``pb.Image`` (targets not set) per image: encoded bytes for files and pixels, float32
    tensors; pixels PNG cannot hold (other than 1, 3 or 4 channels) go as their preprocessed rows
    (files and PIL images for such models were refused by ``preprocess``)."""
    from PIL import Image

    channels = int(batch.shape[1])
    mode = IMAGE_MODES.get(channels)
    items = list(images) if isinstance(images, list | tuple) else [images]
    sources: list[pb.Image] = []

    def as_tensors(rows: np.ndarray) -> None:
        sources.extend(pb.Image(tensor=array_to_tensor(np.ascontiguousarray(t, np.float32))) for t in rows)

    for item in items:
        first = len(sources)
        if isinstance(item, str | os.PathLike) and Path(item).suffix.lower() != ".npy":
            data = Path(item).read_bytes()
            if image_format(data) not in IMAGE_FORMATS:  # servers decode only these: send the pixels
                with Image.open(io.BytesIO(data)) as image:
                    data = _png(np.asarray(image.convert(mode or "RGB")))
            sources.append(pb.Image(encoded=data))
        elif isinstance(item, Image.Image):
            sources.append(pb.Image(encoded=_png(np.asarray(item.convert(mode or "RGB")))))
        else:
            if isinstance(item, str | os.PathLike):
                array = np.load(item, allow_pickle=False)
            elif isinstance(item, torch.Tensor):
                array = item.detach().cpu().numpy()
            else:
                array = np.asarray(item)
            if array.dtype == np.uint8:
                pixels = array[None] if array.ndim == (2 if channels == 1 else 3) else array
                if mode is None:
                    as_tensors(batch[first : first + len(pixels)].numpy())
                else:
                    sources.extend(pb.Image(encoded=_png(p)) for p in pixels)
            else:
                as_tensors(array if array.ndim == 4 else array[None])
    if len(sources) != batch.shape[0]:
        raise InvalidArgumentError("images", f"{len(sources)} images encoded for a batch of {batch.shape[0]}")
    return sources


def _png(pixels: np.ndarray) -> bytes:
    """uint8 [H,W] or [H,W,C] (C = 1, 3 or 4) as PNG bytes."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _set_options(request: pb.ExplainRequest, options: ExplainOptions) -> None:
    out, method = request.output, request.method_options
    size = parse_output_size(options.output_size)
    if size == "input":
        out.size = pb.OUTPUT_SIZE_INPUT
    elif size == "feature":
        out.size = pb.OUTPUT_SIZE_FEATURE
    else:
        assert isinstance(size, tuple)
        out.size, out.height, out.width = pb.OUTPUT_SIZE_CUSTOM, size[0], size[1]
    out.normalize = options.normalize
    out.eps = options.eps
    out.top_k_predictions = options.topk_predictions
    method.smooth_n = options.smooth_n
    method.smooth_sigma = options.smooth_sigma
    method.smooth_seed = options.smooth_seed
    method.score_top_n = options.score_top_n
    method.eigen_smooth = options.eigen_smooth
    method.aug_smooth = options.aug_smooth


def _result(reply: pb.ExplainResponse, info: pb.ModelInfo, images: np.ndarray) -> ExplainResult:
    maps: dict[str, list[list[np.ndarray]]] = {}
    rgb: dict[str, list[list[np.ndarray]]] = {}
    for n, image in enumerate(reply.images):
        for entry in image.maps:
            per_image = maps.setdefault(entry.method, [[] for _ in reply.images])[n]
            per_image.append(tensor_to_array(entry.data, f"images[{n}].maps[{entry.method}]"))
            if entry.HasField("rgb"):
                rgb.setdefault(entry.method, [[] for _ in reply.images])[n].append(
                    tensor_to_array(entry.rgb, f"images[{n}].maps[{entry.method}].rgb")
                )
    logits = np.stack(
        [tensor_to_array(image.logits, f"images[{n}].logits") for n, image in enumerate(reply.images)]
    )
    return ExplainResult(
        maps={method: np.stack([np.stack(targets) for targets in rows]) for method, rows in maps.items()},
        logits=logits,
        probabilities=torch.softmax(torch.from_numpy(logits), dim=1).numpy(),
        target_ids=np.asarray([list(image.target_ids) for image in reply.images], dtype=np.int64),
        target_scores=np.asarray([list(image.target_scores) for image in reply.images], dtype=np.float32),
        target_kinds=np.asarray([[TARGET_KINDS[k] for k in image.target_kinds] for image in reply.images]),
        predictions=[
            [Prediction(p.class_id, p.name, p.probability) for p in image.predictions]
            for image in reply.images
        ],
        images=images,
        class_names=list(info.class_names),
        mean=list(info.mean),
        std=list(info.std),
        rgb={method: np.stack([np.stack(targets) for targets in rows]) for method, rows in rgb.items()},
        model_name=reply.model,
    )
