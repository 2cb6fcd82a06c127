"""Triton python-backend model: encoded images (PNG, JPEG, anything Pillow reads) -> the graph's
``images`` input, as camserve preprocesses (docs/explain.md): RGB, bilinear antialiased resize to the
input size (a plain stretch), /255, then (x - mean) / std per channel.

camserve copies this file as ``<model>_preprocess/1/model.py``; it needs numpy and Pillow only. The
size, mean and std come from the config's parameters. The bytes arrive as UINT8 [n, length] (ragged
across requests), not BYTES: the python backend of Triton 2.51 (PyPI ``nvidia-pytriton``) was built
for numpy 1 and misreads BYTES tensors under numpy 2; tensors cross through DLPack (triton_python_graph).
Trailing zero bytes are ignored by the decoders, so several images of one request can be zero-padded.
Images already at the input size give camserve's numbers exactly; a resize is Pillow's float filter,
within ~1e-5 of torch's (camserve's) on [0, 1].
"""

from __future__ import annotations

import ctypes
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

_USED = ctypes.c_char_p(b"used_dltensor")
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
INPUT = "encoded"
OUTPUT = "images"


def preprocess(data: bytes, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Encoded image bytes -> float32 [3,H,W] (raises OSError / ValueError for bytes that are no image)."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    unit = pixels.astype(np.float32) / np.float32(255.0)
    height, width = size
    if pixels.shape[:2] != (height, width):
        unit = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(unit[..., c]), mode="F").resize(
                        (width, height), Image.Resampling.BILINEAR
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        ).clip(0.0, 1.0)
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((unit - mean_a) / std_a).transpose(2, 0, 1), dtype=np.float32)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        height, width = (int(v) for v in parameters["size"].split(","))
        self.size = (height, width)
        self.mean = [float(v) for v in parameters["mean"].split(",")]
        self.std = [float(v) for v in parameters["std"].split(",")]

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            items = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT))  # uint8 [n, bytes]
            try:
                images = np.stack(
                    [preprocess(row.tobytes(), self.size, self.mean, self.std) for row in items]
                )
            except (OSError, ValueError) as exc:
                message = f"{INPUT}: not a readable image ({exc})"
                error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            capsule = images.__dlpack__()
            tensor = pb_utils.Tensor.from_dlpack(OUTPUT, capsule)
            _set_capsule_name(capsule, _USED)  # as in triton_python_graph: no traceback per tensor
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
