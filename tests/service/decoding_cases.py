"""Both request decoders (camserve.v1 and the Open Inference Protocol) on the same cases, without a
server: ``python -m tests.service.decoding_cases MODELS_ROOT`` prints one JSON object per case with
what each decoder made of it (the decoded request's figures, or the error's status code, field and
message). A separate process because camserve's ``inference`` stubs cannot share a process with
tritonclient's (see camserve.inference); ``test_request_decoding.py`` runs it and checks the answers.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

V1_FIELD_OF = {
    "output_size": "output.size",
    "normalize": "output.normalize",
    "eps": "output.eps",
    "smooth_n": "method_options.smooth_n",
    "smooth_sigma": "method_options.smooth_sigma",
    "smooth_seed": "method_options.smooth_seed",
    "score_top_n": "method_options.score_top_n",
}


@dataclass
class Case:
    """One request, said once and built for both APIs."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)  # ExplainOptions names
    methods: list[str] = field(default_factory=list)
    targets: list[list[int]] | None = None  # per image; None: none given
    images: int = 1
    pixels: tuple[int, int] = (64, 64)  # H, W of each image (encoded PNG / PIXELS)
    uint8_maps: bool = False
    tensor_dims: int = 0  # > 0: send a preprocessed tensor with this many dimensions instead


CASES = [
    Case("defaults"),
    Case("smooth_n=1", {"smooth_n": 1}),
    Case("smooth_n=256", {"smooth_n": 256}),
    Case("smooth_n=0", {"smooth_n": 0}),
    Case("smooth_n=257", {"smooth_n": 257}),
    Case("smooth_sigma=0", {"smooth_sigma": 0.0}),
    Case("smooth_sigma=-0.5", {"smooth_sigma": -0.5}),
    Case("smooth_sigma=nan", {"smooth_sigma": math.nan}),
    Case("smooth_sigma=inf", {"smooth_sigma": math.inf}),
    Case("smooth_seed=-7", {"smooth_seed": -7}),
    Case("eps=0", {"eps": 0.0}),
    Case("eps=-1", {"eps": -1.0}),
    Case("eps=nan", {"eps": math.nan}),
    Case("score_top_n=0", {"score_top_n": 0}),
    Case("score_top_n=3", {"score_top_n": 3}),
    Case("score_top_n=-1", {"score_top_n": -1}),
    Case("normalize=false", {"normalize": False}),
    Case("normalize=false uint8", {"normalize": False}, uint8_maps=True),
    Case("output_size=feature", {"output_size": "feature"}),
    Case("output_size=input", {"output_size": "input"}),
    Case("output_size=7x5", {"output_size": "7x5"}),
    Case("output_size=8192x1", {"output_size": "8192x1"}),
    Case("output_size=0x4", {"output_size": "0x4"}),
    Case("output_size=4x0", {"output_size": "4x0"}),
    Case("output_size=8193x4", {"output_size": "8193x4"}),
    Case("methods=[]", methods=[]),
    Case("methods=gradcam++,gradcam,gradcam++", methods=["gradcam++", "gradcam", "gradcam++"]),
    Case("methods=nope", methods=["nope"]),
    Case("methods=1 MiB name", methods=["m" * 2**20]),
    Case("targets=none", targets=None, images=2),
    Case("targets=[9,-10]", targets=[[9, -10]]),
    Case("targets=[10]", targets=[[10]]),
    Case("targets=[-11]", targets=[[-11]]),
    Case("targets two images", targets=[[1, 2], [3, -1]], images=2),
    Case("pixels 300x200", pixels=(300, 200)),
    Case("tensor 71 dims", tensor_dims=71),
]


def _png(height: int, width: int, seed: int) -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def v1_request(case: Case) -> Any:
    from camserve.v1 import camserve_pb2 as pb

    request = pb.ExplainRequest(model="digits", methods=case.methods)
    for n in range(case.images):
        image = request.images.add()
        if case.tensor_dims:
            image.tensor.shape.extend([1] * case.tensor_dims)
            image.tensor.data = np.zeros(1, "<f4").tobytes()
        else:
            image.encoded = _png(*case.pixels, seed=n)
        if case.targets is not None:
            image.targets.extend(case.targets[n])
    out, opts = request.output, request.method_options
    for name, value in case.options.items():
        if name == "output_size":
            if value in ("input", "feature"):
                out.size = pb.OUTPUT_SIZE_INPUT if value == "input" else pb.OUTPUT_SIZE_FEATURE
            else:
                height, width = (int(v) for v in value.split("x"))
                out.size, out.height, out.width = pb.OUTPUT_SIZE_CUSTOM, height, width
        else:
            section, wire = V1_FIELD_OF[name].split(".")
            setattr(out if section == "output" else opts, wire, value)
    if case.uint8_maps:
        out.dtype = pb.DATA_TYPE_UINT8
    return request


def oip_request(case: Case) -> Any:
    from camserve.inference import grpc_service_pb2 as ip

    request = ip.ModelInferRequest(model_name="digits")
    if case.methods:
        request.parameters["methods"].string_param = ",".join(case.methods)
    for name, value in case.options.items():
        param = request.parameters[name]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value
    if case.uint8_maps:
        request.parameters["saliency_datatype"].string_param = "UINT8"
    if case.tensor_dims:
        tensor = request.inputs.add(name="IMAGES", datatype="FP32", shape=[1] * case.tensor_dims)
        request.raw_input_contents.append(np.zeros(1, "<f4").tobytes())
    else:
        height, width = case.pixels
        pixels = np.stack(
            [
                np.random.default_rng(n).integers(0, 256, (height, width, 3), dtype=np.uint8)
                for n in range(case.images)
            ]
        )
        tensor = request.inputs.add(name="PIXELS", datatype="UINT8", shape=list(pixels.shape))
        request.raw_input_contents.append(pixels.tobytes())
    if case.targets is not None:
        targets = np.asarray(case.targets, dtype="<i8")
        request.inputs.add(name="TARGETS", datatype="INT64", shape=list(targets.shape))
        request.raw_input_contents.append(targets.tobytes())
    del tensor
    return request


def outcome(decode: Callable[[], Any], model: Any) -> dict[str, Any]:
    """What a decoder made of a request: the decoded figures, or the error."""
    from camserve.errors import CamserveError

    try:
        request = decode()
    except CamserveError as exc:
        message = str(exc)
        return {
            "code": exc.grpc_code,
            "field": getattr(exc, "argument", message.split(": ", 1)[0]),
            "rule": message.split(": ", 1)[1] if ": " in message else message,
        }
    cost = request.cost(model)
    works = request.decode()
    return {
        "code": "OK",
        "options": asdict(request.options),
        "methods": list(request.methods),
        "targets": [list(image.targets) for image in request.images],
        "pixels": [image.pixels for image in request.images],
        "inputs": [float(np.abs(work.image).sum()) for work in works],
        "answer_itemsize": request.answer.map_itemsize,
        "cost": asdict(cost),
    }


def main(models_root: str) -> None:
    from camserve.config import CamserveConfig
    from camserve.service.codec import decode_request
    from camserve.service.models import ModelRegistry, discover_models
    from camserve.service.oip_codec import decode_infer_request

    config = CamserveConfig.load(env={})
    registry = ModelRegistry.load(discover_models(Path(models_root)), config)
    model = registry.get("digits")
    for case in CASES:
        v1, oip = v1_request(case), oip_request(case)
        answer = {
            "case": case.name,
            "v1": outcome(functools.partial(decode_request, v1, model, config.explain), model),
            "oip": outcome(functools.partial(decode_infer_request, oip, model, config.explain), model),
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
