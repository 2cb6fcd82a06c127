"""camserve.v1 messages <-> the data plane's ServiceRequest and the results. Only translation lives
here: every value is checked by ``camserve.config``'s validators (the ones the Python API and the Open
Inference Protocol use), with the field named as the message spells it (``images[2].targets[0]``).
Images are not decoded here: ``PendingImage.load`` does it once the request is admitted."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.config import (
    ExplainOptions,
    OverlayStyle,
    check_methods,
    check_options,
    check_output_side,
    check_overlay_style,
    check_targets,
)
from camserve.errors import InvalidArgumentError
from camserve.images import denormalize, display_rgb
from camserve.methods.base import method_class
from camserve.methods.target_kinds import TARGET_KINDS, Target, TargetSpec, check_one
from camserve.service.admission import AnswerShape
from camserve.service.batch_runner import ImageResult, ImageWork, maps_as
from camserve.service.dataplane import PendingImage, ServiceRequest
from camserve.service.models import ServedModel, open_image
from camserve.target_masks import png_mask, raw_mask, rle_mask
from camserve.v1 import camserve_pb2 as pb
from camserve.visualize import overlay_png
from camserve.wire import NUMPY_DTYPES, array_to_tensor, check_input_values, tensor_to_array

#: ExplainOptions field -> its name in an ExplainRequest.
OPTION_FIELDS = {
    "output_size": "output.size",
    "normalize": "output.normalize",
    "eps": "output.eps",
    "topk_predictions": "output.top_k_predictions",
    "smooth_n": "method_options.smooth_n",
    "smooth_sigma": "method_options.smooth_sigma",
    "smooth_seed": "method_options.smooth_seed",
    "score_top_n": "method_options.score_top_n",
    "eigen_smooth": "method_options.eigen_smooth",
    "aug_smooth": "method_options.aug_smooth",
}
_ITEMSIZE = {pb.DATA_TYPE_FLOAT32: 4, pb.DATA_TYPE_FLOAT16: 2, pb.DATA_TYPE_UINT8: 1}


@dataclass(frozen=True)
class OutputSpec:
    """How maps are encoded in the response (not part of the computation)."""

    dtype: int  # camserve.v1.DataType
    overlay: bool
    mean: tuple[float, ...]  # to undo the preprocessing for overlays
    std: tuple[float, ...]
    normalized: bool  # overlays of normalised maps use the fixed [0, 1] colour scale
    style: OverlayStyle = OverlayStyle()  # overlays' colour map and image weight


def decode_request(
    request: pb.ExplainRequest, model: ServedModel, defaults: ExplainOptions
) -> ServiceRequest:
    """Check ``request`` against ``model``: the one internal request (images still encoded)."""
    if not request.images:
        raise InvalidArgumentError("images", "at least one image is required")
    methods = check_methods(
        [(f"methods[{i}]", name) for i, name in enumerate(request.methods)],
        model.supported_methods,
        model.name,
    )
    num_classes = model.manifest.num_classes
    # the configured number of predictions is at most what a model with few classes has
    defaults = dataclasses.replace(defaults, topk_predictions=min(defaults.topk_predictions, num_classes))
    options = check_options(_options(request, defaults), OPTION_FIELDS, num_classes)
    spec = model.manifest.target_spec()
    images = [
        _image(image, f"images[{i}]", model, _targets(image, f"images[{i}]", spec, len(request.images)))
        for i, image in enumerate(request.images)
    ]
    dtype = request.output.dtype or pb.DATA_TYPE_FLOAT32
    if dtype not in _ITEMSIZE:
        raise InvalidArgumentError("output.dtype", f"unknown data type {dtype}")
    if dtype == pb.DATA_TYPE_UINT8 and not options.normalize:
        raise InvalidArgumentError(
            "output.dtype", "uint8 maps need normalize = true (raw maps are unbounded)"
        )
    m = model.manifest
    style = _overlay_style(request.output)
    output = OutputSpec(
        dtype, request.output.overlay_png, tuple(m.mean), tuple(m.std), options.normalize, style
    )
    colour = tuple(name for name in methods if method_class(name).colour)
    answer = AnswerShape(methods, _ITEMSIZE[dtype], colour, output.overlay, len(request.id.encode()))
    return ServiceRequest(images, methods, options, answer, wire=output)


def _targets(image: pb.Image, field: str, spec: TargetSpec, num_images: int) -> tuple[int | Target, ...]:
    """One image's targets: plain class ids (``targets``) or Targets (``target_specs``), each
    checked by the one validator of targets (``target_kinds.check_one``)."""
    if image.targets and image.target_specs:
        raise InvalidArgumentError(f"{field}.target_specs", "set at most one of targets and target_specs")
    if not image.target_specs:
        return check_targets(image.targets, spec.num_classes, f"{field}.targets")
    targets = []
    for t, message in enumerate(image.target_specs):
        where = f"{field}.target_specs[{t}]"
        target = decode_target(message, where, spec)
        check_one(target, spec, num_images, where)
        targets.append(target)
    return tuple(targets)


def decode_target(message: pb.Target, field: str, spec: TargetSpec) -> Target:
    """A camserve.v1 Target -> a :class:`Target` (masks decoded; checked afterwards by check_one)."""
    if not 0 <= message.kind < len(TARGET_KINDS):
        raise InvalidArgumentError(f"{field}.kind", f"unknown target kind {message.kind}")
    box = None
    if message.HasField("box"):
        b = message.box
        box = (b.x1, b.y1, b.x2, b.y2)
    return Target(
        kind=TARGET_KINDS[message.kind],
        class_id=message.class_id if message.HasField("class_id") else -1,
        mask=_mask(message.mask, f"{field}.mask", spec) if message.HasField("mask") else None,
        box=box,
        vector=np.asarray(message.vector, dtype=np.float32) if message.vector else None,
        image=message.image if message.HasField("image") else None,
    )


def _mask(mask: pb.Mask, field: str, spec: TargetSpec) -> np.ndarray:
    grid = tuple(spec.output_shape[1:3]) if spec.output_kind == "dense" else None
    source = mask.WhichOneof("source")
    if source == "png":
        return png_mask(mask.png, f"{field}.png", grid)  # type: ignore[arg-type]
    if source == "raw":
        raw = mask.raw
        return raw_mask(raw.data, raw.height, raw.width, f"{field}.raw", grid)  # type: ignore[arg-type]
    if source == "rle":
        rle = mask.rle
        return rle_mask(rle.height, rle.width, rle.counts, f"{field}.rle", grid)  # type: ignore[arg-type]
    raise InvalidArgumentError(field, "set one of png, raw and rle")


def _image(
    image: pb.Image, field: str, model: ServedModel, targets: tuple[int | Target, ...]
) -> PendingImage:
    source = image.WhichOneof("source")
    if source is None:
        raise InvalidArgumentError(field, "set either `encoded` (PNG/JPEG bytes) or `tensor`")
    if source == "encoded":
        if not image.encoded:
            raise InvalidArgumentError(f"{field}.encoded", "is empty")
        header = open_image(image.encoded, f"{field}.encoded")  # checked, nothing decoded
        load = functools.partial(model.preprocess_encoded, header, f"{field}.encoded")
        return PendingImage(targets, header.cost, load)
    array = tensor_to_array(image.tensor, f"{field}.tensor")
    if image.tensor.dtype not in (pb.DATA_TYPE_UNSPECIFIED, pb.DATA_TYPE_FLOAT32):
        raise InvalidArgumentError(f"{field}.tensor.dtype", "preprocessed images must be float32")
    expected = list(model.manifest.input_size)
    if list(array.shape) != expected:
        raise InvalidArgumentError(
            f"{field}.tensor.shape",
            f"expected {expected} (the model's preprocessed input), got {list(array.shape)}",
        )
    check_input_values(array[None], f"{field}.tensor.data")
    return PendingImage(targets, 0, functools.partial(_same, array))  # nothing to decode


def _overlay_style(out: pb.OutputOptions) -> OverlayStyle:
    """The overlay's colour map and image weight; unset: the defaults."""
    weight = out.overlay_image_weight if out.HasField("overlay_image_weight") else OverlayStyle.image_weight
    fields = ("output.overlay_colormap", "output.overlay_image_weight")
    return check_overlay_style(out.overlay_colormap or OverlayStyle.colormap, weight, fields)


def _same(array: np.ndarray, budgeted: bool) -> np.ndarray:
    return array


def _options(request: pb.ExplainRequest, defaults: ExplainOptions) -> ExplainOptions:
    """``defaults`` with what the request sets (checked afterwards, as a whole, by check_options)."""
    out, opts = request.output, request.method_options
    changes: dict[str, Any] = {}
    if out.size == pb.OUTPUT_SIZE_INPUT:
        changes["output_size"] = "input"
    elif out.size == pb.OUTPUT_SIZE_FEATURE:
        changes["output_size"] = "feature"
    elif out.size == pb.OUTPUT_SIZE_CUSTOM:
        height = check_output_side(out.height, "output.height")
        changes["output_size"] = f"{height}x{check_output_side(out.width, 'output.width')}"
    elif out.size != pb.OUTPUT_SIZE_UNSPECIFIED:
        raise InvalidArgumentError("output.size", f"unknown output size {out.size}")
    if out.size != pb.OUTPUT_SIZE_CUSTOM and (out.height or out.width):
        raise InvalidArgumentError("output.height", "height and width are only read with OUTPUT_SIZE_CUSTOM")
    for name, message, wire in (
        ("normalize", out, "normalize"),
        ("eps", out, "eps"),
        ("topk_predictions", out, "top_k_predictions"),
        ("smooth_n", opts, "smooth_n"),
        ("smooth_sigma", opts, "smooth_sigma"),
        ("smooth_seed", opts, "smooth_seed"),
        ("score_top_n", opts, "score_top_n"),
        ("eigen_smooth", opts, "eigen_smooth"),
        ("aug_smooth", opts, "aug_smooth"),
    ):
        if message.HasField(wire):
            changes[name] = getattr(message, wire)
    return dataclasses.replace(defaults, **changes)


def encode_response(
    request: pb.ExplainRequest,
    model: ServedModel,
    decoded: ServiceRequest,
    works: list[ImageWork],
    results: list[ImageResult],
) -> pb.ExplainResponse:
    output: OutputSpec = decoded.wire
    images = [encode_image_result(r, w, output) for r, w in zip(results, works, strict=True)]
    return pb.ExplainResponse(id=request.id, model=model.name, images=images)


def encode_image_result(result: ImageResult, work: ImageWork, output: OutputSpec) -> pb.ImageExplanation:
    """One image's answer: predictions, resolved targets, logits and a map per (target, method), from
    the host maps of the batch (``ImageResult``)."""
    maps = []
    pixels = _pixels(work.image, output) if output.overlay else None
    dtype = NUMPY_DTYPES[output.dtype]
    data = {method: maps_as(result.maps[method], dtype) for method in work.methods}
    floats = result.maps  # overlays draw the float maps
    for t, class_id in enumerate(result.target_ids.tolist()):
        for method in work.methods:
            entry = pb.Map(
                method=method,
                target_index=t,
                class_id=class_id,
                data=array_to_tensor(data[method][t]),
            )
            if pixels is not None:
                entry.overlay_png = overlay_png(pixels, floats[method][t], output.normalized, output.style)
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
        target_kinds=result.target_kinds.tolist(),
        target_scores=[] if result.target_scores is None else result.target_scores.tolist(),
    )


def _pixels(image: np.ndarray, output: OutputSpec) -> np.ndarray:
    """A preprocessed [C,H,W] image as displayable RGB [H,W,3] in [0, 1] (``display_rgb``)."""
    import torch

    return display_rgb(denormalize(torch.from_numpy(image)[None], output.mean, output.std))[0].numpy()


def model_info(model: ServedModel, max_batch_size: int) -> pb.ModelInfo:
    m = model.manifest
    spec = m.target_spec()
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
        output_kind=spec.output_kind,
        target_kinds=[f"TARGET_KIND_{kind.upper()}" for kind in spec.kinds],
        output_shape=list(spec.output_shape),
    )
