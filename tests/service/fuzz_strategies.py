"""Hypothesis strategies for the request-decoder fuzzing (``test_fuzz_decoders.py``): camserve.v1
ExplainRequests and Open Inference Protocol ModelInferRequests, mostly valid field by field (a field must
pass for a decoder to reach the next one), sometimes anything the wire allows, with small shapes so that
a valid request costs milliseconds. ``infer_requests(ip)`` builds messages of the given ``inference``
stubs: tritonclient's in the test process, camserve's in the subprocess (see camserve.inference)."""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from camserve.config import CamserveConfig
from camserve.errors import CamserveError
from camserve.v1 import camserve_pb2 as pb
from tests.service.service_helpers import MODEL

CLIENT_ERRORS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "UNIMPLEMENTED"}
ANSWERS = {grpc.StatusCode[name] for name in CLIENT_ERRORS} | {grpc.StatusCode.OK}
IN_PROCESS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIVE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALL_TIMEOUT_S = 60.0

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Mostly small values around the limits, sometimes anything the wire allows.
SMALL_INT = st.one_of(st.integers(-3, 20), st.sampled_from([0, 64, 255, 256, 257, 8192, 8193]), INT32)


def mostly(valid: st.SearchStrategy, anything: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` three times in four: a field must pass for the decoder to reach the next one."""
    return st.one_of(valid, valid, valid, anything)


NAMES = st.one_of(
    st.sampled_from(["gradcam", "gradcam++", "scorecam", "smoothgradcam++", "layercam", "cam", "GRADCAM"]),
    st.text(max_size=12),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1e-7, 0.15])
)


def png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["png", "truncated", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    data = png(draw(st.integers(1, 80)), draw(st.integers(1, 80)), draw(st.integers(0, 9)))
    return data if kind == "png" else data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def shapes_and_data(draw: st.DrawFn, itemsize: int = 4) -> tuple[list[int], bytes]:
    """A tensor shape (the model's, a near miss, many dimensions, negative or huge) and its bytes
    (the right amount for small shapes, or any few bytes)."""
    shape = draw(
        st.one_of(
            st.just([3, 64, 64]),
            st.lists(st.integers(-2, 5), max_size=4),
            st.integers(60, 80).map(lambda n: [1] * n),  # more dimensions than numpy takes
            st.lists(INT64, max_size=3),
        )
    )
    count = int(np.prod(shape, dtype=object)) if all(0 <= d for d in shape) else -1
    if 0 <= count * itemsize <= 64 * 64 * 3 * 4 and draw(st.booleans()):
        data = np.asarray(draw(st.lists(FLOATS, min_size=1, max_size=1)) * count, np.float32).tobytes()
        return shape, data[: count * itemsize] if itemsize == 4 else bytes(count * itemsize)
    return shape, draw(st.binary(max_size=32))


@st.composite
def explain_requests(draw: st.DrawFn) -> pb.ExplainRequest:
    images = []
    for _ in range(draw(st.integers(0, 3))):
        image = pb.Image(targets=draw(st.lists(st.one_of(st.integers(-12, 12), INT64), max_size=3)))
        source = draw(st.sampled_from(["encoded", "tensor", "tensor", "none"]))
        if source == "encoded":
            image.encoded = draw(encoded_images())
        elif source == "tensor":
            shape, data = draw(shapes_and_data())
            dtype = draw(mostly(st.sampled_from([0, 1]), st.integers(0, 5)))
            image.tensor.CopyFrom(pb.Tensor(shape=shape, data=data, dtype=dtype))
        images.append(image)
    request = pb.ExplainRequest(
        id=draw(st.text(max_size=8)),
        model=draw(mostly(st.just(MODEL), st.text(max_size=10))),
        images=images,
        methods=draw(
            mostly(
                st.lists(st.sampled_from(["gradcam", "gradcam++", "layercam"]), max_size=2),
                st.lists(NAMES, max_size=3),
            )
        ),
    )
    output = request.output
    output.size = draw(mostly(st.integers(0, 2), st.integers(0, 5)))
    output.height, output.width = draw(st.sampled_from([0, 1, 7, 48, 100, 8193, -1])), draw(SMALL_INT)
    output.dtype = draw(mostly(st.integers(0, 3), st.integers(0, 5)))
    output.overlay_png = draw(st.booleans())
    if draw(st.booleans()):
        output.normalize = draw(st.booleans())
    if draw(st.booleans()):
        output.top_k_predictions = draw(SMALL_INT)
    if draw(st.booleans()):
        output.eps = draw(FLOATS)
    options = request.method_options
    if draw(st.booleans()):
        options.smooth_n = draw(st.sampled_from([-1, 0, 1, 2, 257, 2**31 - 1]))
    if draw(st.booleans()):
        options.smooth_sigma = draw(FLOATS)
    if draw(st.booleans()):
        options.score_top_n = draw(SMALL_INT)
    if draw(st.booleans()):
        options.smooth_seed = draw(INT64)
    return request


def parameter(draw: st.DrawFn, ip: ModuleType) -> Any:
    kind = draw(
        st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"])
    )
    value = {
        "bool_param": st.booleans(),
        "int64_param": st.one_of(SMALL_INT, INT64),
        "string_param": st.one_of(
            NAMES, st.sampled_from(["input", "feature", "8x8", "0x0", "FP16", "UINT8"])
        ),
        "double_param": FLOATS,
        "uint64_param": st.integers(0, 2**64 - 1),
    }[kind]
    return ip.InferParameter(**{kind: draw(value)})


@st.composite
def infer_requests(draw: st.DrawFn, ip: ModuleType) -> Any:
    request = ip.ModelInferRequest(
        model_name=draw(mostly(st.just(MODEL), st.text(max_size=10))),
        model_version=draw(mostly(st.sampled_from(["", "1"]), st.sampled_from(["2", "x", "01"]))),
        id=draw(st.text(max_size=8)),
    )
    names = st.sampled_from(["IMAGES", "PIXELS", "TARGETS", "OTHER", ""])
    datatypes = st.sampled_from(["FP32", "UINT8", "INT64", "FP16", "BYTES", "INT8", ""])
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        name, datatype = draw(names), draw(datatypes)
        itemsize = {"FP32": 4, "UINT8": 1, "INT64": 8, "FP16": 2}.get(datatype, 1)
        if name == "PIXELS" and draw(st.booleans()):
            shape = [draw(st.integers(1, 2)), draw(st.integers(1, 40)), draw(st.integers(1, 40)), 3]
            data = bytes(draw(st.binary(min_size=1, max_size=1)) * int(np.prod(shape)))
        else:
            shape, data = draw(shapes_and_data(itemsize))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(data)
        elif datatype == "INT64":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-20, 20), max_size=4)))
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(draw(st.lists(FLOATS, max_size=4)))
    if draw(st.booleans()):  # raw contents that do not match the inputs
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(
            name=draw(
                st.one_of(st.sampled_from(["LOGITS", "TARGET_IDS", "SALIENCY_GRADCAM"]), st.text(max_size=8))
            )
        )
    keys = st.sampled_from(
        ["methods", "output_size", "normalize", "eps", "saliency_datatype", "smooth_n", "smooth_sigma",
         "smooth_seed", "score_top_n", "timeout", "priority", "unknown"]
    )  # fmt: skip
    for key in draw(mostly(st.just([]), st.lists(keys, max_size=4, unique=True))):
        request.parameters[key].CopyFrom(parameter(draw, ip))
    return request


def decode_fully(decode: Any, request: Any, model: Any, config: CamserveConfig) -> None:
    """The decoder, then everything the server does with its result before the batcher: the cost
    check (admission) and decoding the images."""
    from camserve.service.admission import admit

    decoded = decode(request, model, config.explain)
    admit(decoded.cost(model), config.service)
    works = decoded.decode()
    assert all(w.image.dtype == np.float32 and np.isfinite(w.image).all() for w in works)


def assert_client_error_or_ok(call: Any) -> None:
    try:
        call()
    except CamserveError as exc:
        assert exc.grpc_code in CLIENT_ERRORS, f"{type(exc).__name__}: {exc}"


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy) -> bytes:
    """A serialised message with a few bytes overwritten, cut short or appended."""
    data = bytearray(draw(messages).SerializeToString())
    for _ in range(draw(st.integers(0, 3))):
        if data and draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data += draw(st.binary(min_size=1, max_size=4))
    if data and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)
