"""camserve.v1 messages <-> the service's work items and results. Every check of a request's fields
lives here, and every error names the field (``images[2].targets[0]``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camserve.config import ExplainOptions
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.methods.compute import MAX_OUTPUT_SIDE
from camserve.service.models import ServedModel
from camserve.service.overlay import overlay_png
from camserve.service.runner import ImageResult, ImageWork
from camserve.service.tensors import array_to_tensor, tensor_to_array
from camserve.v1 import camserve_pb2 as pb

MAX_SMOOTH_N = 256  # noisy copies multiply the batch: more would let one request stall a model


@dataclass(frozen=True)
class OutputSpec:
    """How maps are encoded in the response (not part of the computation)."""

    dtype: int  # camserve.v1.DataType
    overlay: bool
    mean: tuple[float, ...]  # to undo the preprocessing for overlays
    std: tuple[float, ...]


@dataclass(frozen=True)
class DecodedRequest:
    works: list[ImageWork]
    options: ExplainOptions
    output: OutputSpec


def decode_request(
    request: pb.ExplainRequest, model: ServedModel, defaults: ExplainOptions
) -> DecodedRequest:
    """Check ``request`` against ``model`` and turn it into one work item per image."""
    if not request.images:
        raise InvalidArgumentError("images", "at least one image is required")
    methods = _methods(request.methods, model)
    num_classes = model.manifest.num_classes
    works = []
    for i, image in enumerate(request.images):
        array = _image(image, f"images[{i}]", model)
        targets = _targets(image.targets, f"images[{i}].targets", num_classes)
        works.append(ImageWork(array, targets, methods))
    options = _options(request, defaults, num_classes)
    dtype = request.output.dtype or pb.DATA_TYPE_FLOAT32
    if dtype == pb.DATA_TYPE_UINT8 and not options.normalize:
        raise InvalidArgumentError(
            "output.dtype", "uint8 maps need normalize = true (raw maps are unbounded)"
        )
    if dtype not in (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT16, pb.DATA_TYPE_UINT8):
        raise InvalidArgumentError("output.dtype", f"unknown data type {dtype}")
    m = model.manifest
    return DecodedRequest(
        works, options, OutputSpec(dtype, request.output.overlay_png, tuple(m.mean), tuple(m.std))
    )


def _methods(names: Sequence[str], model: ServedModel) -> tuple[str, ...]:
    if not names:
        names = ["gradcam"]
    supported = model.supported_methods
    out: list[str] = []
    for i, name in enumerate(names):
        if name not in supported:
            raise UnsupportedError(
                f"methods[{i}]: {name!r} is not supported by model {model.name!r} "
                f"(supported: {', '.join(supported)})"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def _image(image: pb.Image, field: str, model: ServedModel) -> np.ndarray:
    source = image.WhichOneof("source")
    if source is None:
        raise InvalidArgumentError(field, "set either `encoded` (PNG/JPEG bytes) or `tensor`")
    if source == "encoded":
        if not image.encoded:
            raise InvalidArgumentError(f"{field}.encoded", "is empty")
        return model.preprocess_encoded(image.encoded, f"{field}.encoded")
    array = tensor_to_array(image.tensor, f"{field}.tensor")
    if image.tensor.dtype not in (pb.DATA_TYPE_UNSPECIFIED, pb.DATA_TYPE_FLOAT32):
        raise InvalidArgumentError(f"{field}.tensor.dtype", "preprocessed images must be float32")
    expected = list(model.manifest.input_size)
    if list(array.shape) != expected:
        raise InvalidArgumentError(
            f"{field}.tensor.shape",
            f"expected {expected} (the model's preprocessed input), got {list(array.shape)}",
        )
    if not np.isfinite(array).all():
        raise InvalidArgumentError(f"{field}.tensor.data", "contains NaN or infinite values")
    return array


def _targets(targets: Sequence[int], field: str, num_classes: int) -> tuple[int, ...]:
    if not targets:
        return (-1,)
    for t, target in enumerate(targets):
        if not -num_classes <= target < num_classes:
            raise InvalidArgumentError(
                f"{field}[{t}]",
                f"{target} is out of range: class ids are 0..{num_classes - 1}, "
                f"or -1..-{num_classes} for the k-th best class",
            )
    return tuple(targets)


def _options(request: pb.ExplainRequest, defaults: ExplainOptions, num_classes: int) -> ExplainOptions:
    out, opts = request.output, request.method_options
    changes: dict[str, object] = {}
    if out.size == pb.OUTPUT_SIZE_INPUT:
        changes["output_size"] = "input"
    elif out.size == pb.OUTPUT_SIZE_FEATURE:
        changes["output_size"] = "feature"
    elif out.size == pb.OUTPUT_SIZE_CUSTOM:
        for name, value in (("height", out.height), ("width", out.width)):
            if not 1 <= value <= MAX_OUTPUT_SIDE:
                raise InvalidArgumentError(f"output.{name}", f"must be in 1..{MAX_OUTPUT_SIDE}, got {value}")
        changes["output_size"] = f"{out.height}x{out.width}"
    elif out.size != pb.OUTPUT_SIZE_UNSPECIFIED:
        raise InvalidArgumentError("output.size", f"unknown output size {out.size}")
    if out.size != pb.OUTPUT_SIZE_CUSTOM and (out.height or out.width):
        raise InvalidArgumentError("output.height", "height and width are only read with OUTPUT_SIZE_CUSTOM")
    if out.HasField("normalize"):
        changes["normalize"] = out.normalize
    if out.HasField("top_k_predictions"):
        if not 1 <= out.top_k_predictions <= num_classes:
            raise InvalidArgumentError(
                "output.top_k_predictions", f"must be in 1..{num_classes}, got {out.top_k_predictions}"
            )
        changes["topk_predictions"] = out.top_k_predictions
    if opts.HasField("smooth_n"):
        if not 1 <= opts.smooth_n <= MAX_SMOOTH_N:
            raise InvalidArgumentError(
                "method_options.smooth_n", f"must be in 1..{MAX_SMOOTH_N}, got {opts.smooth_n}"
            )
        changes["smooth_n"] = opts.smooth_n
    if opts.HasField("smooth_sigma"):
        if not (math.isfinite(opts.smooth_sigma) and opts.smooth_sigma >= 0):
            raise InvalidArgumentError(
                "method_options.smooth_sigma", f"must be >= 0, got {opts.smooth_sigma}"
            )
        changes["smooth_sigma"] = opts.smooth_sigma
    if out.HasField("eps"):
        if not (math.isfinite(out.eps) and out.eps >= 0):
            raise InvalidArgumentError("output.eps", f"must be >= 0, got {out.eps}")
        changes["eps"] = out.eps
    if opts.HasField("smooth_seed"):
        changes["smooth_seed"] = opts.smooth_seed
    if opts.HasField("score_top_n"):
        if opts.score_top_n < 0:
            raise InvalidArgumentError("method_options.score_top_n", f"must be >= 0, got {opts.score_top_n}")
        changes["score_top_n"] = opts.score_top_n
    return dataclasses.replace(defaults, **changes)


def encode_image_result(result: ImageResult, work: ImageWork, output: OutputSpec) -> pb.ImageExplanation:
    """One image's answer: predictions, resolved targets, logits and a map per (target, method)."""
    maps = []
    for t, class_id in enumerate(result.target_ids.tolist()):
        for method in work.methods:
            values = result.maps[method][t]
            entry = pb.Map(
                method=method,
                target_index=t,
                class_id=class_id,
                data=array_to_tensor(_convert(values, output.dtype)),
            )
            if output.overlay:
                entry.overlay_png = overlay_png(work.image, values, output.mean, output.std)
            if method in result.rgb:
                entry.rgb.CopyFrom(array_to_tensor(result.rgb[method][t]))
            maps.append(entry)
    return pb.ImageExplanation(
        predictions=[
            pb.Prediction(class_id=p.class_id, name=p.name, probability=p.probability)
            for p in result.predictions
        ],
        target_ids=result.target_ids.tolist(),
        logits=array_to_tensor(result.logits.astype(np.float32, copy=False)),
        maps=maps,
    )


def _convert(values: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == pb.DATA_TYPE_FLOAT16:
        return values.astype(np.float16)
    if dtype == pb.DATA_TYPE_UINT8:
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return values.astype(np.float32, copy=False)


def model_info(model: ServedModel, max_batch_size: int) -> pb.ModelInfo:
    m = model.manifest
    return pb.ModelInfo(
        name=model.name,
        architecture=m.architecture,
        target_layer=m.target_layer,
        input_size=list(m.input_size),
        mean=list(m.mean),
        std=list(m.std),
        num_classes=m.num_classes,
        class_names=list(m.class_names),
        supported_methods=list(model.supported_methods),
        activation_shape=list(m.activation_shape),
        max_batch_size=max_batch_size,
    )
