"""A Triton Inference Server model repository for a model directory's explain graph.

    write_triton_repository("models/digits", "triton-models")

writes::

    triton-models/digits/config.pbtxt    platform onnxruntime_onnx, batching, inputs and outputs
    triton-models/digits/1/model.onnx    a copy of explain.onnx

Triton then serves the raw explain graph (images, targets -> logits, activations, gradients,
target_ids): the CAM maths stays with the client (or a camserve server). Inputs and outputs, their
data types and dims come from the ONNX graph itself; the batch dimension is left out of ``dims`` when
every input and output is batched along a dynamic first dimension (``max_batch_size`` > 0), and other
dynamic dimensions are -1.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from camserve.errors import ExportError, InvalidArgumentError
from camserve.modeldir import ModelDirectory

PLATFORM = "onnxruntime_onnx"
GRAPH = "explain"
INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as camserve serve accepts

#: ONNX TensorProto element types -> Triton data types.
_DATA_TYPES: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # -1: dynamic; without the batch dimension when the model batches


@dataclass(frozen=True)
class TritonModelConfig:
    name: str
    max_batch_size: int  # 0: the graph has no shared dynamic batch dimension
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_count: int
    instance_kind: str

    def to_pbtxt(self) -> str:
        """The configuration in protobuf text format (Triton's config.pbtxt)."""
        lines = [f'name: "{self.name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {self.max_batch_size}"]
        for field, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{field} [")
            entries = [
                f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
                f"    dims: [ {', '.join(map(str, t.dims))} ]\n  }}"
                for t in tensors
            ]
            lines.append(",\n".join(entries))
            lines.append("]")
        if self.max_batch_size > 0:
            lines.append("dynamic_batching {")
            if self.preferred_batch_sizes:
                lines.append(f"  preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]")
            lines.append(f"  max_queue_delay_microseconds: {self.max_queue_delay_us}")
            lines.append("}")
        lines += [
            "instance_group [",
            f"  {{\n    count: {self.instance_count}\n    kind: {self.instance_kind}\n  }}",
            "]",
        ]
        return "\n".join(lines) + "\n"


def _tensors(values: Sequence[onnx.ValueInfoProto], what: str) -> list[tuple[str, str, list[int | None]]]:
    """(name, Triton data type, dims with None for dynamic) of graph inputs or outputs."""
    out = []
    for value in values:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor_type.elem_type not in _DATA_TYPES:
            raise ExportError(f"explain graph {what} {value.name!r}: not a tensor of a type Triton knows")
        if not tensor_type.HasField("shape"):
            raise ExportError(f"explain graph {what} {value.name!r}: no shape (rank unknown)")
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        ]
        out.append((value.name, _DATA_TYPES[tensor_type.elem_type], dims))
    return out


def triton_config(
    graph: onnx.ModelProto,
    name: str,
    *,
    max_batch_size: int = 16,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 5000,
    instance_count: int = 1,
    instance_kind: str = "KIND_AUTO",
) -> TritonModelConfig:
    """The Triton configuration of ``graph`` (its inputs and outputs read from the graph).

    ``preferred_batch_sizes`` None: half of ``max_batch_size`` and ``max_batch_size``.
    """
    if not MODEL_NAME.match(name):
        raise InvalidArgumentError("name", f"{name!r}: use letters, digits, '.', '_' and '-'")
    if max_batch_size < 1:
        raise InvalidArgumentError("max_batch_size", f"must be at least 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise InvalidArgumentError("max_queue_delay_us", f"must be >= 0, got {max_queue_delay_us}")
    if instance_count < 1:
        raise InvalidArgumentError("instance_count", f"must be at least 1, got {instance_count}")
    if instance_kind not in INSTANCE_KINDS:
        raise InvalidArgumentError(
            "instance_kind", f"{instance_kind!r} is not one of {', '.join(INSTANCE_KINDS)}"
        )
    if preferred_batch_sizes is None:
        preferred = sorted({max(1, max_batch_size // 2), max_batch_size})
    else:
        preferred = sorted(set(preferred_batch_sizes))
        if any(not 1 <= size <= max_batch_size for size in preferred):
            raise InvalidArgumentError(
                "preferred_batch_sizes", f"must be in 1..{max_batch_size} (max_batch_size), got {preferred}"
            )
    initializers = {init.name for init in graph.graph.initializer}
    inputs = _tensors([v for v in graph.graph.input if v.name not in initializers], "input")
    outputs = _tensors(graph.graph.output, "output")
    # Triton batches a model only if every input and output has a dynamic first (batch) dimension.
    batched = all(dims and dims[0] is None for _, _, dims in inputs + outputs)
    if not batched:
        max_batch_size, preferred = 0, []

    def config(tensors: list[tuple[str, str, list[int | None]]]) -> tuple[TensorConfig, ...]:
        return tuple(
            TensorConfig(
                name, data_type, tuple(-1 if d is None else d for d in (dims[1:] if batched else dims))
            )
            for name, data_type, dims in tensors
        )

    return TritonModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=config(inputs),
        outputs=config(outputs),
        preferred_batch_sizes=tuple(preferred),
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instance_count,
        instance_kind=instance_kind,
    )


def write_triton_repository(
    model_dir: str | os.PathLike[str] | ModelDirectory,
    repository: str | os.PathLike[str],
    *,
    name: str | None = None,
    force: bool = False,
    **config: object,
) -> Path:
    """Write ``repository/<name>/config.pbtxt`` and ``repository/<name>/1/model.onnx`` (the model
    directory's explain graph); returns the model's folder. ``name`` None: the manifest's name;
    ``config``: the keyword arguments of :func:`triton_config`. Other models in ``repository`` are
    left alone; an existing folder of this model is replaced only with ``force``."""
    directory = model_dir if isinstance(model_dir, ModelDirectory) else ModelDirectory(Path(model_dir))
    source = directory.graph_path(GRAPH)
    name = name or directory.name
    graph = onnx.load(str(source), load_external_data=False)
    settings = triton_config(graph, name, **config)  # type: ignore[arg-type]
    root = Path(repository)
    target = root / name
    if target.exists() and not force:
        raise InvalidArgumentError("triton_repository", f"{target} exists; pass --force to replace it")
    root.mkdir(parents=True, exist_ok=True)
    # Build next to the target and move it in at the end: a failure leaves nothing half-written.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        (staging / "1").mkdir()
        shutil.copyfile(source, staging / "1" / "model.onnx")
        (staging / "config.pbtxt").write_text(settings.to_pbtxt())
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
