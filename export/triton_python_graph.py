"""Triton python-backend model that runs ``model.onnx`` (beside this file) with ONNX Runtime.

camserve copies this file as ``<model>/1/model.py``; it needs only numpy and onnxruntime in the
backend's Python (not camserve). Requests whose target counts differ are batched together (the
config marks the per-target inputs ``allow_ragged_batch``): the batch runs once with every request's
targets padded to the longest (ids with -1, the top class; kinds and data with 0), and each answer
keeps its own targets only.

The python backend of Triton 2.51 (PyPI ``nvidia-pytriton``) was built against numpy 1: under numpy 2
its ``as_numpy()`` reads wrong values and ``Tensor(name, array)`` sends empty ones, so tensors cross
the boundary through DLPack, which both numpy versions share.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

TARGETS = "targets"
PAD_TARGET = -1  # padding slots ask for the top class; their maps are dropped
PAD_OTHER = 0  # target_kinds (kind 0) and target_data of padding slots


def _array(tensor: Any) -> np.ndarray:
    return np.array(np.from_dlpack(tensor))  # a copy: the request's memory is Triton's


# The backend renames a consumed capsule "used_dlpack", not DLPack's "used_dltensor": numpy's capsule
# destructor then logs a traceback per tensor (harmless: the backend frees the tensor itself).
_USED = ctypes.c_char_p(b"used_dltensor")  # module-level: the capsule keeps this pointer
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _tensor(name: str, array: np.ndarray) -> Any:
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED)
    return tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads") or 0)
        # Idle threads sleep rather than spin: they share the cores with Triton's own threads (as camserve's
        # runtime does, for the same reason).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id") or 0)
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        # Outputs with a target dimension (dim 1), from the config written at export.
        self.per_target = set(json.loads(parameters.get("target_outputs") or "[]"))
        # Inputs with a target dimension (a config written before target kinds: targets only).
        self.target_inputs = [
            name
            for name in json.loads(parameters.get("target_inputs") or '["targets"]')
            if name in self.inputs
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        for request in requests:
            for name in self.inputs:
                feeds[name].append(_array(pb_utils.get_input_tensor_by_name(request, name)))
        sizes = [len(a) for a in feeds[self.inputs[0]]]
        counts = [a.shape[1] for a in feeds[TARGETS]] if TARGETS in feeds else []
        if counts:
            width = max(1, *counts)
            for name in self.target_inputs:
                pad = PAD_TARGET if name == TARGETS else PAD_OTHER
                feeds[name] = [
                    np.pad(
                        a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=pad
                    )
                    for a in feeds[name]
                ]
        wanted: set[str] = set()
        for request in requests:
            wanted.update(request.requested_output_names() or self.outputs)
        names = [n for n in self.outputs if n in wanted]
        try:
            results = self.session.run(names, {n: np.concatenate(v) for n, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 -- every request of the batch gets the graph's error
            error = pb_utils.TritonError(f"the graph failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        start = 0
        for index, (request, size) in enumerate(zip(requests, sizes, strict=True)):
            own = set(request.requested_output_names() or self.outputs)
            tensors = []
            for name, value in zip(names, results, strict=True):
                if name not in own:
                    continue
                part = value[start : start + size]
                if name in self.per_target and counts:
                    part = part[:, : counts[index]]
                tensors.append(_tensor(name, part))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
