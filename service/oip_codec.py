"""Open Inference Protocol (inference.*) messages <-> the service's work items and results. The
protocol's own checks (tensor names, shapes, datatypes, parameters) live here, and every error names
what was wrong (``inputs[1] (TARGETS)``, ``parameters.smooth_n``, ``outputs[0]``).

What a camserve model looks like over this protocol (ModelMetadata says the same):

inputs   IMAGES      FP32  [N, C, H, W]  preprocessed (the model's input size, mean and std)
         PIXELS      UINT8 [N, h, w, C]  raw pixels of any size, C the model's channels; the server
                                         resizes and normalises them from the manifest (exactly one
                                         of IMAGES and PIXELS)
         TARGETS     INT64 [N, T]        optional: class ids, or -k for the k-th best class; default -1;
                                         for dot_image / cosine_image targets: an image index
         TARGET_KINDS INT64 [N, T]       optional: each target's kind code (camserve.v1's TargetKind:
                                         0 logit, 1 probability, 2 sigmoid, 3 region, ...); absent:
                                         the model's default kind; needs TARGETS
         TARGET_DATA FP32  [N, T, L]     optional: each target's data, L from ModelMetadata: region:
                                         the mask [h', w'] flattened; box: x1, y1, x2, y2; dot /
                                         cosine: the concept vector; other kinds: ignored
outputs  LOGITS      FP32  [N, C]
         TARGET_IDS  INT64 [N, T]        the classes explained (negative targets resolved)
         TARGET_SCORES FP32 [N, T]       the explained scalar of each target
         SALIENCY_<METHOD>  FP32 [N, T, H', W']  one per method, e.g. SALIENCY_GRADCAM, SALIENCY_GRADCAM++

Methods come from the request parameter ``methods`` ("gradcam,gradcam++") and from requested
``SALIENCY_<METHOD>`` outputs; with neither, ``camserve.defaults.DEFAULT_METHODS`` (Grad-CAM).
With no requested outputs the answer holds LOGITS, TARGET_IDS and every method's map; otherwise
exactly the requested outputs, in their order.
Other request parameters: see ``PARAMETERS``. Only translation lives here: values are checked by
``camserve.config``'s validators (shared with camserve.v1 and the Python API), and the request
becomes the data plane's ServiceRequest (PIXELS are preprocessed once it is admitted).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.config import ExplainOptions, check_methods, check_options, check_targets, clip
from camserve.defaults import MAX_IMAGE_PIXELS
from camserve.errors import InvalidArgumentError, NotFoundError, UnsupportedError
from camserve.inference import grpc_service_pb2 as ip
from camserve.methods.target_kinds import IMAGE_KINDS, TARGET_KINDS, Target, TargetSpec, check_one
from camserve.service.admission import AnswerShape
from camserve.service.batch_runner import ImageResult, ImageWork, maps_as
from camserve.service.dataplane import PendingImage, ServiceRequest
from camserve.service.models import ServedModel
from camserve.wire import check_input_values, check_shape

MODEL_VERSION = "1"  # a model directory is one version
PLATFORM = "camserve"
IMAGES, PIXELS, TARGETS = "IMAGES", "PIXELS", "TARGETS"
TARGET_KIND_CODES, TARGET_DATA = "TARGET_KINDS", "TARGET_DATA"
INPUTS = (IMAGES, PIXELS, TARGETS, TARGET_KIND_CODES, TARGET_DATA)
LOGITS, TARGET_IDS, TARGET_SCORES = "LOGITS", "TARGET_IDS", "TARGET_SCORES"
OUTPUTS = (LOGITS, TARGET_IDS, TARGET_SCORES)
SALIENCY_PREFIX = "SALIENCY_"

#: Datatype name -> little-endian numpy dtype, for the datatypes camserve reads or writes.
DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "UINT8": np.dtype("u1"),
    "INT64": np.dtype("<i8"),
}
#: Which InferTensorContents field holds each datatype (the spec's table).
_CONTENTS_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents", "INT64": "int64_contents"}
_SALIENCY_DATATYPES = ("FP32", "FP16", "UINT8")

#: Request parameters: name -> (kind, what it sets). "priority" is accepted and has no effect: the
#: batcher treats all requests alike. "timeout" (microseconds) shortens the call's deadline.
PARAMETERS: dict[str, tuple[str, str]] = {
    "methods": ("string", "comma-separated CAM methods, e.g. gradcam,gradcam++"),
    "output_size": ("string", "input, feature or HxW"),
    "normalize": ("bool", "per-map min-max to [0, 1] (false: raw ReLU'd maps)"),
    "eps": ("double", "min-max denominator epsilon"),
    "saliency_datatype": ("string", "FP32, FP16 or UINT8 (UINT8 needs normalize)"),
    "smooth_n": ("int", "Smooth Grad-CAM++ noisy copies"),
    "smooth_sigma": ("double", "Smooth Grad-CAM++ noise std (fraction of the input range)"),
    "smooth_seed": ("int", "Smooth Grad-CAM++ noise seed"),
    "score_top_n": ("int", "Score-CAM channels (0: all)"),
    "eigen_smooth": ("bool", "first principal component of the weighted activations instead of their sum"),
    "aug_smooth": ("bool", "mean of the maps of 6 flipped / scaled copies of each image (6x the work)"),
    "timeout": ("int", "microseconds; shortens the call's deadline"),
    "priority": ("int", "accepted; all requests have the same priority"),
}


def saliency_output(method: str) -> str:
    """``gradcam++`` -> ``SALIENCY_GRADCAM++``."""
    return SALIENCY_PREFIX + method.upper()


#: ExplainOptions field -> its name in a ModelInferRequest.
OPTION_FIELDS = {
    name: f"parameters.{name}"
    for name in (
        "output_size",
        "normalize",
        "eps",
        "smooth_n",
        "smooth_sigma",
        "smooth_seed",
        "score_top_n",
        "eigen_smooth",
        "aug_smooth",
    )
}


@dataclass(frozen=True)
class InferAnswer:
    """How the answer is written (ServiceRequest.wire)."""

    outputs: list[str]  # output names, in answer order
    saliency_datatype: str


def check_version(version: str, model: ServedModel) -> None:
    if version not in ("", MODEL_VERSION):
        raise NotFoundError(
            f"model {model.name!r} has no version {clip(repr(version))} "
            f"(served: {MODEL_VERSION!r}, or leave it empty)"
        )


def decode_infer_request(
    request: ip.ModelInferRequest, model: ServedModel, defaults: ExplainOptions
) -> ServiceRequest:
    """Check ``request`` against ``model``: the one internal request (PIXELS not preprocessed yet)."""
    check_version(request.model_version, model)
    params = _Parameters(request.parameters, "parameters")
    methods = _methods(params, request.outputs, model)
    outputs = _outputs(request.outputs, methods)
    options = check_options(_options(params, defaults), OPTION_FIELDS)
    datatype = params.string("saliency_datatype") or "FP32"
    if datatype not in _SALIENCY_DATATYPES:
        raise InvalidArgumentError(
            "parameters.saliency_datatype",
            f"{clip(repr(datatype))} is not one of {', '.join(_SALIENCY_DATATYPES)}",
        )
    if datatype == "UINT8" and not options.normalize:
        raise InvalidArgumentError(
            "parameters.saliency_datatype", "UINT8 maps need normalize = true (raw maps are unbounded)"
        )
    timeout_us = params.integer("timeout")
    if timeout_us is not None and timeout_us <= 0:
        raise InvalidArgumentError("parameters.timeout", f"must be > 0 microseconds, got {timeout_us}")
    params.integer("priority")
    images = _inputs(request, model)
    answered = tuple(m for m in methods if saliency_output(m) in outputs)
    answer = AnswerShape(answered, DTYPES[datatype].itemsize, id_bytes=len(request.id.encode()))
    timeout_s = None if timeout_us is None else timeout_us / 1e6
    return ServiceRequest(images, methods, options, answer, InferAnswer(outputs, datatype), timeout_s)


# -- parameters ------------------------------------------------------------------------------------


class _Parameters:
    """Typed reads of a parameters map; unknown names are refused up front."""

    def __init__(self, params: Mapping[str, ip.InferParameter], field: str) -> None:
        self.params = params
        self.field = field
        for name in params:
            if name in ("sequence_id", "sequence_start", "sequence_end"):
                raise UnsupportedError(f"{field}.{name}: camserve models are stateless (no sequences)")
            if name not in PARAMETERS:
                raise InvalidArgumentError(
                    f"{field}.{clip(name)}", f"unknown parameter (known: {', '.join(PARAMETERS)})"
                )

    def _get(self, name: str, kinds: tuple[str, ...], expected: str) -> Any:
        if name not in self.params:
            return None
        param = self.params[name]
        kind = param.WhichOneof("parameter_choice")
        if kind not in kinds:
            raise InvalidArgumentError(
                f"{self.field}.{name}", f"expected {expected}, got {kind or 'nothing'}"
            )
        return getattr(param, kind)

    def string(self, name: str) -> str | None:
        return self._get(name, ("string_param",), "a string")

    def boolean(self, name: str) -> bool | None:
        return self._get(name, ("bool_param",), "a bool")

    def integer(self, name: str) -> int | None:
        return self._get(name, ("int64_param", "uint64_param"), "an integer")

    def number(self, name: str) -> float | None:
        return self._get(name, ("double_param", "int64_param", "uint64_param"), "a number")


def _methods(
    params: _Parameters,
    outputs: Sequence[ip.ModelInferRequest.InferRequestedOutputTensor],
    model: ServedModel,
) -> tuple[str, ...]:
    supported = model.supported_methods
    named: list[tuple[str, str]] = []  # (field, method)
    text = params.string("methods")
    if text is not None:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise InvalidArgumentError("parameters.methods", f"empty method name in {clip(repr(text))}")
        named.extend((f"parameters.methods[{i}]", part.lower()) for i, part in enumerate(parts))
    for i, output in enumerate(outputs):
        if output.name.startswith(SALIENCY_PREFIX):
            named.append((f"outputs[{i}] ({clip(output.name)})", output.name[len(SALIENCY_PREFIX) :].lower()))
    return check_methods(named, supported, model.name)


def _outputs(
    requested: Sequence[ip.ModelInferRequest.InferRequestedOutputTensor], methods: tuple[str, ...]
) -> list[str]:
    if not requested:
        return [*OUTPUTS, *(saliency_output(m) for m in methods)]
    names: list[str] = []
    for i, output in enumerate(requested):
        if output.parameters:
            raise UnsupportedError(
                f"outputs[{i}] ({clip(output.name)}).parameters: {', '.join(sorted(output.parameters))} "
                "not supported (camserve outputs take no parameters)"
            )
        if output.name in names:
            raise InvalidArgumentError(f"outputs[{i}]", f"{clip(repr(output.name))} is requested twice")
        if output.name not in OUTPUTS and not output.name.startswith(SALIENCY_PREFIX):
            raise InvalidArgumentError(
                f"outputs[{i}]",
                f"unknown output {clip(repr(output.name))} "
                f"(outputs: {', '.join(OUTPUTS)}, {SALIENCY_PREFIX}<METHOD>)",
            )
        names.append(output.name)
    return names


def _options(params: _Parameters, defaults: ExplainOptions) -> ExplainOptions:
    """``defaults`` with what the parameters set (checked afterwards, as a whole, by check_options)."""
    reads = {
        "output_size": params.string,
        "normalize": params.boolean,
        "eps": params.number,
        "smooth_n": params.integer,
        "smooth_sigma": params.number,
        "smooth_seed": params.integer,
        "score_top_n": params.integer,
        "eigen_smooth": params.boolean,
        "aug_smooth": params.boolean,
    }
    changes: dict[str, Any] = {
        name: value for name, read in reads.items() if (value := read(name)) is not None
    }
    return dataclasses.replace(defaults, **changes)


# -- inputs ----------------------------------------------------------------------------------------


def _inputs(request: ip.ModelInferRequest, model: ServedModel) -> list[PendingImage]:
    """The request's images (PIXELS preprocessed when loaded) with each image's targets."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            "raw_input_contents",
            f"has {len(raw)} entries for {len(request.inputs)} inputs (one per input, in order)",
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}] ({clip(tensor.name)})" if tensor.name else f"inputs[{i}]"
        if tensor.name not in INPUTS:
            raise InvalidArgumentError(
                field,
                f"unknown input {clip(repr(tensor.name))} (inputs: {IMAGES} or {PIXELS}, and "
                f"{TARGETS}, {TARGET_KIND_CODES}, {TARGET_DATA})",
            )
        if tensor.name in arrays:
            raise InvalidArgumentError(field, f"{tensor.name} is given twice")
        if tensor.parameters:
            names = ", ".join(sorted(tensor.parameters))
            raise UnsupportedError(f"{field}.parameters: {names} not supported (no shared memory inputs)")
        arrays[tensor.name] = _tensor(tensor, raw[i] if raw else None, field)
    if (IMAGES in arrays) == (PIXELS in arrays):
        raise InvalidArgumentError(
            "inputs", f"give exactly one of {IMAGES} (FP32 [N,C,H,W]) and {PIXELS} (UINT8 [N,H,W,C])"
        )
    field = _field(request, IMAGES if IMAGES in arrays else PIXELS)
    images = (
        _images(arrays[IMAGES], field, model) if IMAGES in arrays else _pixels(arrays[PIXELS], field, model)
    )
    count = len(images)
    targets: list[tuple[int | Target, ...]]
    if TARGETS not in arrays:
        for name in (TARGET_KIND_CODES, TARGET_DATA):
            if name in arrays:
                raise InvalidArgumentError(_field(request, name), f"needs {TARGETS} (the class ids)")
        targets = [(-1,)] * count
    elif TARGET_KIND_CODES not in arrays:
        if TARGET_DATA in arrays:
            raise InvalidArgumentError(_field(request, TARGET_DATA), f"needs {TARGET_KIND_CODES}")
        targets = [*_targets(arrays[TARGETS], _field(request, TARGETS), count, model.manifest.num_classes)]
    else:
        targets = _kind_targets(request, arrays, count, model.manifest.target_spec())
    return [PendingImage(row, pixels, load) for (pixels, load), row in zip(images, targets, strict=True)]


def _field(request: ip.ModelInferRequest, name: str) -> str:
    index = next(i for i, t in enumerate(request.inputs) if t.name == name)
    return f"inputs[{index}] ({name})"


def _tensor(tensor: ip.ModelInferRequest.InferInputTensor, raw: bytes | None, field: str) -> np.ndarray:
    """The input's data as an array of its shape; nothing is allocated from an unchecked shape."""
    if tensor.datatype not in DTYPES:
        raise InvalidArgumentError(
            f"{field}.datatype", f"{clip(repr(tensor.datatype))} is not one of {', '.join(DTYPES)}"
        )
    dtype = DTYPES[tensor.datatype]
    shape = check_shape(tensor.shape, f"{field}.shape")
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgumentError(
                f"{field}.contents", "set either raw_input_contents (for every input) or contents"
            )
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgumentError(
                f"raw_input_contents ({tensor.name})",
                f"holds {len(raw)} bytes but {tensor.datatype} {list(shape)} needs {count * dtype.itemsize}",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    contents_field = _CONTENTS_FIELD.get(tensor.datatype)
    if contents_field is None:
        raise InvalidArgumentError(f"{field}.contents", f"{tensor.datatype} data goes in raw_input_contents")
    values = getattr(tensor.contents, contents_field)
    if len(values) != count:
        raise InvalidArgumentError(
            f"{field}.contents.{contents_field}",
            f"holds {len(values)} values but shape {list(shape)} needs {count}",
        )
    if tensor.datatype == "UINT8" and any(v > 255 for v in values):
        raise InvalidArgumentError(f"{field}.contents.uint_contents", "UINT8 values must be in 0..255")
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)


Loader = tuple[int, Callable[[bool], np.ndarray]]  # (decoded pixels, how to get the [3,H,W] input)


def _images(array: np.ndarray, field: str, model: ServedModel) -> list[Loader]:
    if array.dtype != np.float32:
        raise InvalidArgumentError(f"{field}.datatype", "IMAGES are preprocessed FP32 (raw pixels: PIXELS)")
    expected = list(model.manifest.input_size)
    if array.ndim != 4 or list(array.shape[1:]) != expected or array.shape[0] == 0:
        raise InvalidArgumentError(
            f"{field}.shape",
            f"expected [N, {', '.join(map(str, expected))}] with N >= 1, got {list(array.shape)}",
        )
    check_input_values(array, field)
    return [(0, functools.partial(_row, array, n)) for n in range(array.shape[0])]  # nothing to decode


def _row(array: np.ndarray, n: int, budgeted: bool) -> np.ndarray:
    return array[n]


def _pixels(array: np.ndarray, field: str, model: ServedModel) -> list[Loader]:
    if array.dtype != np.uint8:
        raise InvalidArgumentError(f"{field}.datatype", "PIXELS are UINT8 (preprocessed images: IMAGES)")
    channels = int(model.manifest.input_size[0])
    if array.ndim != 4 or array.shape[3] != channels or min(array.shape[:3]) == 0:
        raise InvalidArgumentError(
            f"{field}.shape",
            f"expected [N, H, W, {channels}] pixels (the model's {channels} input channels) with "
            f"N, H, W >= 1, got {list(array.shape)}",
        )
    if array.shape[1] * array.shape[2] > MAX_IMAGE_PIXELS:
        raise InvalidArgumentError(
            f"{field}.shape",
            f"images are {array.shape[2]}x{array.shape[1]}; at most {MAX_IMAGE_PIXELS} pixels",
        )
    pixels = int(array.shape[1] * array.shape[2])
    return [
        (pixels, functools.partial(_preprocess_row, model, array, n, f"{field}[{n}]"))
        for n in range(array.shape[0])
    ]


def _preprocess_row(model: ServedModel, array: np.ndarray, n: int, field: str, budgeted: bool) -> np.ndarray:
    return model.preprocess_pixels(array[n : n + 1], field, budgeted)[0]


def _targets(array: np.ndarray, field: str, count: int, num_classes: int) -> list[tuple[int, ...]]:
    if array.dtype != np.int64:
        raise InvalidArgumentError(f"{field}.datatype", "TARGETS are INT64")
    if array.ndim != 2 or array.shape[0] != count or not 1 <= array.shape[1] <= num_classes:
        raise InvalidArgumentError(
            f"{field}.shape",
            f"expected [{count}, T] (one row per image, 1 <= T <= {num_classes}), got {list(array.shape)}",
        )
    return [check_targets(row, num_classes, f"{field}[{n}]") for n, row in enumerate(array.tolist())]


def _kind_targets(
    request: ip.ModelInferRequest, arrays: dict[str, np.ndarray], count: int, spec: TargetSpec
) -> list[tuple[int | Target, ...]]:
    """TARGETS with TARGET_KINDS (and TARGET_DATA) -> each image's Targets, each checked by
    ``target_kinds.check_one`` (errors name the input and entry: ``inputs[2] (TARGET_KINDS)[0][1]``)."""
    ids, kinds = arrays[TARGETS], arrays[TARGET_KIND_CODES]
    ids_field, kinds_field = _field(request, TARGETS), _field(request, TARGET_KIND_CODES)
    if ids.dtype != np.int64 or ids.ndim != 2 or ids.shape[0] != count or ids.shape[1] == 0:
        raise InvalidArgumentError(
            f"{ids_field}.shape", f"expected INT64 [{count}, T] with T >= 1, got {list(ids.shape)}"
        )
    if kinds.dtype != np.int64 or kinds.shape != ids.shape:
        raise InvalidArgumentError(
            f"{kinds_field}.shape",
            f"expected INT64 {list(ids.shape)} (as {TARGETS}), got {list(kinds.shape)}",
        )
    length = spec.data_length
    data = arrays.get(TARGET_DATA)
    data_field = _field(request, TARGET_DATA) if data is not None else TARGET_DATA
    if data is not None and (data.dtype != np.float32 or data.shape != (*ids.shape, length)):
        raise InvalidArgumentError(
            f"{data_field}.shape",
            f"expected FP32 {[*ids.shape, length]} (L = {length}), got {list(data.shape)}",
        )
    rows: list[tuple[int | Target, ...]] = []
    for n in range(count):
        row: list[int | Target] = []
        for t in range(ids.shape[1]):
            code = int(kinds[n, t])
            if not 0 <= code < len(TARGET_KINDS):
                raise InvalidArgumentError(f"{kinds_field}[{n}][{t}]", f"unknown target kind {code}")
            values = None if data is None else data[n, t]
            target = _row_target(int(ids[n, t]), TARGET_KINDS[code], values, spec, f"{data_field}[{n}][{t}]")
            check_one(target, spec, count, f"{kinds_field}[{n}][{t}]")
            row.append(target)
        rows.append(tuple(row))
    return rows


def _row_target(class_id: int, kind: str, values: np.ndarray | None, spec: TargetSpec, field: str) -> Target:
    """One (id, kind, data row) of the graph-input form as a Target."""
    if kind in IMAGE_KINDS:
        return Target(kind=kind, image=class_id)
    needs_data = kind in ("region", "box", "dot", "cosine")
    if needs_data and values is None:
        raise InvalidArgumentError(TARGET_DATA, f"{kind} targets need {TARGET_DATA} ({field})")
    if values is not None and not np.isfinite(values).all() and needs_data:
        raise InvalidArgumentError(field, "has non-finite values")
    if kind == "region":
        assert values is not None
        return Target(kind=kind, class_id=class_id, mask=values.reshape(spec.output_shape[1:3]))
    if kind == "box":
        assert values is not None
        x1, y1, x2, y2 = (float(v) for v in values[:4])
        return Target(kind=kind, class_id=class_id, box=(x1, y1, x2, y2))
    if kind in ("dot", "cosine"):
        return Target(kind=kind, vector=values)
    return Target(kind=kind, class_id=class_id)


# -- answers ---------------------------------------------------------------------------------------


def encode_infer_response(
    request: ip.ModelInferRequest,
    model: ServedModel,
    decoded: ServiceRequest,
    works: Sequence[ImageWork],
    results: Sequence[ImageResult],
) -> ip.ModelInferResponse:
    """The requested outputs of all images, stacked along the batch dimension, as raw contents."""
    answer: InferAnswer = decoded.wire
    response = ip.ModelInferResponse(model_name=model.name, model_version=MODEL_VERSION, id=request.id)
    for name in answer.outputs:
        if name == LOGITS:
            array, datatype = np.stack([r.logits for r in results]).astype("<f4", copy=False), "FP32"
        elif name == TARGET_IDS:
            array, datatype = np.stack([r.target_ids for r in results]).astype("<i8", copy=False), "INT64"
        elif name == TARGET_SCORES:
            array, datatype = np.stack([_scores(r) for r in results]).astype("<f4", copy=False), "FP32"
        else:
            method = name[len(SALIENCY_PREFIX) :].lower()
            maps = np.stack([r.maps[method] for r in results])
            datatype = answer.saliency_datatype
            array = maps_as(maps, DTYPES[datatype])
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


def _scores(result: ImageResult) -> np.ndarray:
    if result.target_scores is None:
        raise UnsupportedError(f"{TARGET_SCORES}: this model's runtime gives no target scores")
    return result.target_scores


# -- metadata --------------------------------------------------------------------------------------


def model_metadata(model: ServedModel) -> ip.ModelMetadataResponse:
    """The model's tensors (TARGET_DATA, [N, T, L], only for models whose targets carry data); its
    output and target kinds are in ModelConfig's parameters (:func:`model_config`)."""
    m = model.manifest
    spec = m.target_spec()
    tensor = ip.ModelMetadataResponse.TensorMetadata
    return ip.ModelMetadataResponse(
        name=model.name,
        versions=[MODEL_VERSION],
        platform=PLATFORM,
        inputs=[
            tensor(name=IMAGES, datatype="FP32", shape=[-1, *m.input_size]),
            tensor(name=PIXELS, datatype="UINT8", shape=[-1, -1, -1, m.input_size[0]]),
            tensor(name=TARGETS, datatype="INT64", shape=[-1, -1]),
            tensor(name=TARGET_KIND_CODES, datatype="INT64", shape=[-1, -1]),
            *(
                [tensor(name=TARGET_DATA, datatype="FP32", shape=[-1, -1, spec.data_length])]
                if spec.data_length
                else []
            ),
        ],
        outputs=[
            tensor(name=LOGITS, datatype="FP32", shape=[-1, m.num_classes]),
            tensor(name=TARGET_IDS, datatype="INT64", shape=[-1, -1]),
            tensor(name=TARGET_SCORES, datatype="FP32", shape=[-1, -1]),
            *(
                tensor(name=saliency_output(x), datatype="FP32", shape=[-1] * 4)
                for x in model.supported_methods
            ),
        ],
    )


def model_config(
    model: ServedModel,
    max_batch_size: int,
    max_queue_delay_ms: float,
    instance_kind: ip.ModelInstanceGroup.Kind,
) -> ip.ModelConfig:
    """Triton's view of the model: dims without the batch dimension (max_batch_size > 0). IMAGES and
    PIXELS are both optional: a request carries exactly one of them. Parameters (as Triton's):
    ``output_kind``, ``target_kinds`` ("region=3,predicted_region=4": names and TARGET_KINDS codes,
    the first what plain TARGETS mean) and ``target_data_length`` (L of TARGET_DATA)."""
    m = model.manifest
    spec = m.target_spec()
    kinds = ",".join(f"{kind}={TARGET_KINDS.index(kind)}" for kind in spec.kinds)
    parameters = {
        "output_kind": ip.ModelParameter(string_value=spec.output_kind),
        "target_kinds": ip.ModelParameter(string_value=kinds),
        "target_data_length": ip.ModelParameter(string_value=str(spec.data_length)),
    }
    return ip.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=PLATFORM,
        max_batch_size=max_batch_size,
        input=[
            ip.ModelInput(
                name=IMAGES,
                data_type=ip.TYPE_FP32,
                format=ip.ModelInput.FORMAT_NCHW,
                dims=list(m.input_size),
                optional=True,
            ),
            ip.ModelInput(
                name=PIXELS,
                data_type=ip.TYPE_UINT8,
                format=ip.ModelInput.FORMAT_NHWC,
                dims=[-1, -1, m.input_size[0]],
                optional=True,
            ),
            ip.ModelInput(name=TARGETS, data_type=ip.TYPE_INT64, dims=[-1], optional=True),
            ip.ModelInput(name=TARGET_KIND_CODES, data_type=ip.TYPE_INT64, dims=[-1], optional=True),
            *(
                [
                    ip.ModelInput(
                        name=TARGET_DATA, data_type=ip.TYPE_FP32, dims=[-1, spec.data_length], optional=True
                    )
                ]
                if spec.data_length
                else []
            ),
        ],
        output=[
            ip.ModelOutput(name=LOGITS, data_type=ip.TYPE_FP32, dims=[m.num_classes]),
            ip.ModelOutput(name=TARGET_IDS, data_type=ip.TYPE_INT64, dims=[-1]),
            ip.ModelOutput(name=TARGET_SCORES, data_type=ip.TYPE_FP32, dims=[-1]),
            *(
                ip.ModelOutput(name=saliency_output(x), data_type=ip.TYPE_FP32, dims=[-1, -1, -1])
                for x in model.supported_methods
            ),
        ],
        instance_group=[ip.ModelInstanceGroup(count=1, kind=instance_kind)],
        parameters=parameters,
        dynamic_batching=ip.ModelDynamicBatching(
            preferred_batch_size=[max_batch_size],
            max_queue_delay_microseconds=round(max_queue_delay_ms * 1000),
        ),
    )
