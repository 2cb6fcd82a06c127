"""``OnnxGraphRunner``: the GraphRunner protocol on ONNX Runtime.

One code path for both devices: inputs and outputs are torch tensors bound with IO binding
(``bind_input`` / ``bind_output`` on the tensors' own buffers). On the CPU that avoids copies; on a
GPU (CUDA execution provider) the activations and gradients land in CUDA tensors that the CAM
kernels read directly, and nothing reaches the host until the final maps. Output shapes are known
from the manifest, so output buffers are allocated up front by torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from camserve.config import RuntimeConfig
from camserve.errors import UnsupportedError
from camserve.modeldir import ModelDirectory
from camserve.outputs import ExplainOutputs

log = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when onnxruntime-gpu and a CUDA device are both present, else 'cpu'."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UnsupportedError(
            "device 'cuda' requested, but ONNX Runtime's CUDA provider or a CUDA device is missing "
            "(install camserve[gpu] on a machine with a GPU)"
        )
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


class OnnxGraphRunner:
    """Runs a model directory's graphs; sessions are created on first use and then reused."""

    def __init__(self, model_dir: ModelDirectory, runtime: RuntimeConfig | None = None) -> None:
        self.model_dir = model_dir
        self.runtime = runtime or RuntimeConfig()
        self.device = torch.device(resolve_device(self.runtime.device))
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        manifest = model_dir.manifest
        self.num_classes = manifest.num_classes
        self.activation_shape = tuple(manifest.activation_shape)
        self.input_size = tuple(manifest.input_size)

    # -- the GraphRunner protocol -------------------------------------------------------------

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> ExplainOutputs:
        n, t = targets.shape
        k = self.activation_shape[0]
        prefix = self.model_dir.manifest.prefix_tokens
        shapes = {
            "logits": ((n, self.num_classes), torch.float32),
            "activations": ((n, *self.activation_shape), torch.float32),
            "gradients": ((n, t, *self.activation_shape), torch.float32),
            "target_ids": ((n, t), torch.int64),
        }
        if prefix:
            shapes["extra_tokens"] = ((n, prefix, k), torch.float32)
        out = self._run("explain", {"images": images, "targets": targets}, shapes)
        return ExplainOutputs(
            out["logits"], out["activations"], out["gradients"], out["target_ids"], out.get("extra_tokens")
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.model_dir.has_graph("forward"):  # the explain graph also gives logits
            targets = torch.full((images.shape[0], 1), -1, dtype=torch.int64, device=images.device)
            return self.explain(images, targets).logits
        shapes = {"logits": ((images.shape[0], self.num_classes), torch.float32)}
        return self._run("forward", {"images": images}, shapes)["logits"]

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"activations": activations}
        if self.model_dir.manifest.prefix_tokens:
            if extra_tokens is None:
                raise UnsupportedError("this model's head needs the extra (class) tokens of the explain run")
            inputs["extra_tokens"] = extra_tokens
        shapes = {"logits": ((activations.shape[0], self.num_classes), torch.float32)}
        return self._run("head", inputs, shapes)["logits"]

    def guided(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, t = targets.shape
        shapes = {"input_gradients": ((n, t, *images.shape[1:]), torch.float32)}
        return self._run("guided", {"images": images, "targets": targets}, shapes)["input_gradients"]

    # -- ONNX Runtime ---------------------------------------------------------------------------

    def session(self, graph: str) -> ort.InferenceSession:
        with self._lock:
            if graph not in self._sessions:
                options = ort.SessionOptions()
                options.intra_op_num_threads = self.runtime.intra_op_threads
                options.inter_op_num_threads = self.runtime.inter_op_threads
                options.log_severity_level = 3  # constant-folding chatter is not a user concern
                # Idle intra-op threads sleep instead of spinning: they share the cores with the CAM
                # maths, the service's event loop and gRPC (2-3.4x the throughput on a busy 2-core host).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                providers: Sequence = ["CPUExecutionProvider"]
                if self.device.type == "cuda":
                    device_id = self.device.index or 0
                    providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
                path = str(self.model_dir.graph_path(graph))
                self._sessions[graph] = ort.InferenceSession(path, options, providers=providers)
            return self._sessions[graph]

    def _run(
        self,
        graph: str,
        inputs: dict[str, torch.Tensor],
        outputs: dict[str, tuple[tuple[int, ...], torch.dtype]],
    ) -> dict[str, torch.Tensor]:
        session = self.session(graph)
        binding = session.io_binding()
        device_type = self.device.type
        device_id = self.device.index or 0
        keep = []  # the bound tensors must outlive the run
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device).contiguous()
            keep.append(tensor)
            binding.bind_input(
                name, device_type, device_id, _NP_DTYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr()
            )
        result = {}
        for name, (shape, dtype) in outputs.items():
            buffer = torch.empty(shape, dtype=dtype, device=self.device)
            result[name] = buffer
            if buffer.numel() == 0:
                continue
            binding.bind_output(
                name, device_type, device_id, _NP_DTYPES[dtype], list(shape), buffer.data_ptr()
            )
        if device_type == "cuda":
            binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        if device_type == "cuda":
            binding.synchronize_outputs()
        return result
