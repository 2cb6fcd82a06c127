"""``OnnxGraphRunner``: the GraphRunner protocol on ONNX Runtime, and the device setting it runs on.

One code path for both devices: inputs and outputs are torch tensors bound with IO binding
(``bind_input`` / ``bind_output`` on the tensors' own buffers). On the CPU that avoids copies; on a
GPU (CUDA execution provider) the activations and gradients land in CUDA tensors that the CAM
kernels read directly, and nothing reaches the host until the final maps. Output shapes are known
from the manifest, so output buffers are allocated up front by torch.

CUDA provider settings (docs/kernels.md explains each):

* ``use_tf32=0`` unless ``runtime.allow_tf32``: TF32 convolutions and matmuls carry ~1e-3 relative
  error; with it off the CUDA maps match the CPU provider's to float32 rounding.
* ``cudnn_conv_algo_search=HEURISTIC``: EXHAUSTIVE re-benchmarks every convolution for each new
  batch shape (the batcher, Score-CAM remainders and Smooth Grad-CAM++ make many).
* ``arena_extend_strategy=kSameAsRequested``: a model has up to four sessions, each with its own
  arena beside torch's allocator; growing by what is asked rather than doubling keeps each one at
  the size its runs need.
* ``user_compute_stream``: each runner owns one torch CUDA stream and gives it to ONNX Runtime as
  its compute stream. A run waits for the caller's current stream (an event, no host wait), and
  the caller's stream waits for the run: no device-wide synchronise, so several models' workers
  overlap on one GPU.
* ``device_id``: the runner's ``cuda:N`` (``runtime.device``), also the IO binding's device id.

Why the CUDA path would not work here is ``camserve.doctor``'s question (``python -m camserve.doctor``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch

from camserve.config import RuntimeConfig
from camserve.doctor import CUDA_PROVIDER, gpu_stack, gpu_stack_problems, preload_cuda_libraries
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.methods.target_kinds import KIND_CODE, TARGET_KINDS, TargetSpec, TargetTable
from camserve.modeldir import ModelDirectory
from camserve.outputs import ExplainOutputs

log = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _cuda_unavailable(reason: str, problems: Sequence[str]) -> UnsupportedError:
    stack = gpu_stack()
    versions = (
        f"torch {stack['torch']} (CUDA {stack['torch CUDA']}), onnxruntime {stack['onnxruntime (module)']} "
        f"(CUDA {stack['onnxruntime CUDA']}, providers: {stack['onnxruntime providers']})"
    )
    details = "; ".join(problems) if problems else "no cause found: see ONNX Runtime's log above"
    return UnsupportedError(
        f"{reason}: {details} [{versions}]; `python -m camserve.doctor` checks the install"
    )


def check_device(requested: object, field: str = "runtime.device") -> str:
    """The one check of a device setting (config, environment, ``--device``): 'auto', 'cpu', 'cuda'
    or 'cuda:N'. Only the spelling: whether the device exists is ``resolve_device``'s question."""
    if not isinstance(requested, str) or not _DEVICE_PATTERN.fullmatch(requested):
        raise InvalidArgumentError(field, f"{requested!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    return requested


def device_kind(requested: str) -> Literal["auto", "cpu", "cuda"]:
    """What a device setting asks for, without its index: 'cuda:1' -> 'cuda'."""
    device = check_device(requested)
    if device.startswith("cuda"):
        return "cuda"
    return "auto" if device == "auto" else "cpu"


def _cuda_usable() -> bool:
    return CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available()


def uses_cuda(requested: str) -> bool:
    """Whether ``runtime.device`` runs on a GPU here: 'cuda', 'cuda:N', and 'auto' where
    ``resolve_device`` would pick CUDA (ONNX Runtime's CUDA provider and a GPU both present)."""
    kind = device_kind(requested)
    return kind == "cuda" or (kind == "auto" and _cuda_usable())


def resolve_device(requested: str) -> torch.device:
    """``runtime.device`` -> a torch device with an index for CUDA.

    'auto' is the current CUDA device when ONNX Runtime's CUDA provider and a GPU are both present,
    else the CPU; 'cuda' is the current CUDA device; 'cuda:N' is device N."""
    check_device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    has_cuda = _cuda_usable()
    if requested == "auto":
        if has_cuda:
            return torch.device("cuda", torch.cuda.current_device())
        if (
            torch.cuda.is_available()
        ):  # a GPU the install cannot use: say why rather than run on the CPU silently
            log.warning("runtime.device 'auto': using the CPU: %s", "; ".join(gpu_stack_problems()))
        return torch.device("cpu")
    if not has_cuda:
        raise _cuda_unavailable(f"runtime.device {requested!r}", gpu_stack_problems())
    device = torch.device(requested)
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise InvalidArgumentError(
            "runtime.device", f"{requested!r}: there are {torch.cuda.device_count()} CUDA devices (0..)"
        )
    return device


# --------------------------------------------------------------------------------------------------
# The runner


class OnnxGraphRunner:
    """Runs a model directory's graphs; sessions are created on first use and then reused."""

    def __init__(self, model_dir: ModelDirectory, runtime: RuntimeConfig | None = None) -> None:
        self.model_dir = model_dir
        self.runtime = runtime or RuntimeConfig()
        self.device = resolve_device(self.runtime.device)
        # ONNX Runtime's compute stream on a GPU; see the module docstring
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._names: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        manifest = model_dir.manifest
        self.spec = manifest.target_spec()
        self.num_classes = manifest.num_classes
        # width of the class scores (``logits``): an embedding's are the embedding itself
        self.score_width = (
            int(self.spec.output_shape[0]) if self.spec.output_kind == "embedding" else self.num_classes
        )
        self.activation_shape = tuple(manifest.activation_shape)
        # the further target layers' [K, h, w] (explain outputs activations_i, gradients_i)
        self.layer_shapes = [tuple(int(v) for v in shape) for shape in manifest.activation_shapes[1:]]
        self.input_size = tuple(manifest.input_size)
        # per-image shape of the head's extra input, when it has one: ViT's prefix (class) tokens
        # [P, K], or for a layer that is not a cut the anchor block's input (manifest notes)
        extra = manifest.notes.get("extra_shape")
        if extra is None and manifest.prefix_tokens:
            extra = [manifest.prefix_tokens, self.activation_shape[0]]
        self.extra_shape: tuple[int, ...] | None = None if extra is None else tuple(int(v) for v in extra)

    # -- the GraphRunner protocol -------------------------------------------------------------

    def explain(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> ExplainOutputs:
        """See ``GraphRunner.explain``; a plain [N,T] int tensor stands for class ids of the output's
        default kind (``TargetTable.of_ids``)."""
        table = self._table(targets)
        n, t = table.shape
        shapes = {
            "logits": ((n, self.score_width), torch.float32),
            "activations": ((n, *self.activation_shape), torch.float32),
            "gradients": ((n, t, *self.activation_shape), torch.float32),
            "target_ids": ((n, t), torch.int64),
        }
        scored = "target_scores" in self._output_names("explain")
        if scored:
            shapes["target_scores"] = ((n, t), torch.float32)
        if self.extra_shape is not None:
            shapes["extra_tokens"] = ((n, *self.extra_shape), torch.float32)
        for i, shape in enumerate(self.layer_shapes, 1):
            shapes[f"activations_{i}"] = ((n, *shape), torch.float32)
            shapes[f"gradients_{i}"] = ((n, t, *shape), torch.float32)
        out = self._run("explain", self._target_inputs("explain", images, table), shapes)
        # graphs exported before target kinds explain logits only: their scores are the logits
        scores = out["target_scores"] if scored else out["logits"].gather(1, out["target_ids"])
        return ExplainOutputs(
            out["logits"],
            out["activations"],
            out["gradients"],
            out["target_ids"],
            out.get("extra_tokens"),
            scores,
            [(out[f"activations_{i}"], out[f"gradients_{i}"]) for i in range(1, len(self.layer_shapes) + 1)],
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.model_dir.has_graph("forward"):  # the explain graph also gives the class scores
            return self.explain(images, default_targets(self.spec, images.shape[0], 1, images.device)).logits
        shapes = {"logits": ((images.shape[0], self.score_width), torch.float32)}
        return self._run("forward", {"images": images}, shapes)["logits"]

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"activations": activations}
        if self.extra_shape is not None:
            if extra_tokens is None:
                raise UnsupportedError("this model's head needs the extra tokens of the explain run")
            inputs["extra_tokens"] = extra_tokens
        shapes = {"logits": ((activations.shape[0], self.score_width), torch.float32)}
        return self._run("head", inputs, shapes)["logits"]

    def guided(self, images: torch.Tensor, targets: TargetTable | torch.Tensor) -> torch.Tensor:
        table = self._table(targets)
        n, t = table.shape
        shapes = {"input_gradients": ((n, t, *images.shape[1:]), torch.float32)}
        inputs = self._target_inputs("guided", images, table)
        return self._run("guided", inputs, shapes)["input_gradients"]

    # -- targets --------------------------------------------------------------------------------

    def _table(self, targets: TargetTable | torch.Tensor) -> TargetTable:
        return targets if isinstance(targets, TargetTable) else TargetTable.of_ids(targets, self.spec)

    def _input_names(self, graph: str) -> tuple[str, ...]:
        return self._io_names(graph)[0]

    def _output_names(self, graph: str) -> tuple[str, ...]:
        return self._io_names(graph)[1]

    def _io_names(self, graph: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The graph's input and output names, read from its session once."""
        if graph not in self._names:
            session = self.session(graph)
            self._names[graph] = (
                tuple(node.name for node in session.get_inputs()),
                tuple(node.name for node in session.get_outputs()),
            )
        return self._names[graph]

    def _target_inputs(self, graph: str, images: torch.Tensor, table: TargetTable) -> dict[str, torch.Tensor]:
        """The graph's inputs: images and the target ids, plus ``target_kinds`` and ``target_data``
        where the graph takes them (exported with target kinds); a graph exported before them takes
        class logits only and refuses any other kind."""
        names = self._input_names(graph)
        inputs = {"images": images, "targets": table.ids}
        if "target_kinds" not in names:
            if not table.all_default:
                codes = sorted({int(code) for code in table.kinds.unique().tolist()})
                raise UnsupportedError(
                    f"model {self.model_dir.manifest.name!r} was exported before target kinds: its "
                    f"graphs explain class logits only, not {', '.join(TARGET_KINDS[c] for c in codes)} "
                    "targets; re-export the model (`camserve export`) to explain other target kinds"
                )
            return inputs
        inputs["target_kinds"] = table.kinds
        if "target_data" in names:
            length = self.spec.data_length
            data = table.data
            if data is None:
                data = torch.zeros(*table.shape, length, dtype=torch.float32, device=table.ids.device)
            inputs["target_data"] = data.to(torch.float32)
        return inputs

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, t = targets.shape
        shapes = {"fullgradient_maps": ((n, t, *images.shape[2:]), torch.float32)}
        return self._run("fullgradient", {"images": images, "targets": targets}, shapes)["fullgradient_maps"]

    # -- ONNX Runtime ---------------------------------------------------------------------------

    def cuda_provider_options(self) -> dict[str, str]:
        """The CUDA execution provider's options for this runner (see the module docstring)."""
        assert self.device.type == "cuda" and self._stream is not None
        return {
            "device_id": str(self.device.index),
            "use_tf32": "1" if getattr(self.runtime, "allow_tf32", False) else "0",
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
            "has_user_compute_stream": "1",
            "user_compute_stream": str(self._stream.cuda_stream),
        }

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
                providers: Sequence[Any] = ["CPUExecutionProvider"]
                if self.device.type == "cuda":
                    preload_cuda_libraries()
                    providers = [(CUDA_PROVIDER, self.cuda_provider_options()), "CPUExecutionProvider"]
                path = str(self.model_dir.graph_path(graph))
                session = ort.InferenceSession(path, options, providers=providers)
                # ONNX Runtime falls back to the CPU with only a warning when the CUDA provider
                # fails to load (missing CUDA/cuDNN libraries, a CUDA major version mismatch)
                if self.device.type == "cuda" and CUDA_PROVIDER not in session.get_providers():
                    raise _cuda_unavailable(
                        f"the {graph} graph: ONNX Runtime's CUDA provider did not load on {self.device} "
                        f"(the session has {', '.join(session.get_providers())})",
                        gpu_stack_problems(),
                    )
                self._sessions[graph] = session
            return self._sessions[graph]

    def _run(
        self,
        graph: str,
        inputs: dict[str, torch.Tensor],
        outputs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
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
        if self._stream is None:
            session.run_with_iobinding(binding)
            return result
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)  # inputs and buffers were written/allocated on the caller's stream
        for tensor in keep:
            tensor.record_stream(self._stream)  # freed by the caller only after the run has read it
        run_options = ort.RunOptions()
        # ONNX Runtime would wait for its stream at the end of the run; the caller's stream waits instead
        run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        session.run_with_iobinding(binding, run_options)
        caller.wait_stream(self._stream)
        return result


def default_targets(spec: TargetSpec, num_images: int, num_targets: int, device: torch.device) -> TargetTable:
    """Targets every model takes (warm-up, class scores without a forward graph): the 1st..T-th
    best classes as the output's default kind; an embedding's similarity to its own image."""
    if spec.output_kind == "embedding":
        ids = torch.zeros(num_images, num_targets, dtype=torch.int64, device=device)
        ids += torch.arange(num_images, device=device).reshape(-1, 1)
        kinds = torch.full_like(ids, KIND_CODE["cosine_image"])
        data = torch.zeros(num_images, num_targets, spec.data_length, dtype=torch.float32, device=device)
        return TargetTable(ids, kinds, data)
    ranks = -torch.arange(1, num_targets + 1, dtype=torch.int64, device=device)
    return TargetTable.of_ids(ranks.repeat(num_images, 1), spec)


def warm_up(runner: OnnxGraphRunner, kernels_backend: str = "auto") -> dict[str, float]:
    """Seconds per step of one small run of each graph (creating its session; on a GPU also cuDNN's
    plans) and of the CAM kernels on the outputs (compiling the Triton kernels on a GPU), for one
    and two targets. A server calls it once at start, before reporting ready."""
    from camserve import kernels

    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        value = step(*args)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return value

    backend = kernels_backend
    images = torch.zeros((1, *runner.input_size), dtype=torch.float32, device=runner.device)
    size = (int(runner.input_size[-2]), int(runner.input_size[-1]))
    for t in (1, 2):  # BLOCK_T 1 and 4: the two tile shapes of every kernel (kernels/launch.py)
        targets = default_targets(runner.spec, 1, t, runner.device)
        out = timed("explain", runner.explain, images, targets)
        a, g = out.activations, out.gradients
        for method in kernels.WEIGHT_METHODS:
            maps = timed("kernels", kernels.gradient_weighted_cam, a, g, method, backend)
        timed("kernels", kernels.channel_weights_for_methods, a, g, list(kernels.WEIGHT_METHODS), backend)
        for relu in (False, True):
            timed("kernels", kernels.elementwise_sum_relu, a, g, relu, backend)
        for to_uint8 in (False, True):
            timed("kernels", kernels.upsample_normalize, maps, size, True, 1e-7, to_uint8, backend)
        if runner.model_dir.has_graph("guided"):
            timed("guided", runner.guided, images, targets)
        if runner.model_dir.has_graph("fullgradient"):
            timed("fullgradient", runner.fullgradient, images, targets.ids)
    timed("head", runner.head, out.activations, out.extra_tokens)
    if runner.model_dir.has_graph("forward"):
        timed("forward", runner.forward, images)
    return timings
