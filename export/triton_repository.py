"""A Triton Inference Server model repository for a model directory: its maps graph (or, for a model
without one, its explain graph), served by Triton's onnxruntime backend or its python backend.

    write_triton_repository("models/digits", "triton-models", ensemble=True)

writes::

    triton-models/digits/config.pbtxt          onnxruntime backend (NVIDIA's container), fixed target slots
    triton-models/digits/configs/python.pbtxt  python backend (tritonserver --model-config-name=python)
    triton-models/digits/1/model.onnx          a copy of maps.onnx (else explain.onnx)
    triton-models/digits/1/model.py            runs model.onnx with onnxruntime (python backend)
    triton-models/digits_preprocess/...        with ensemble: encoded image bytes -> images (python)
    triton-models/digits_encoded/config.pbtxt  with ensemble: bytes + targets -> the model's outputs

Batching requests with different target counts (docs/operations.md#triton-inference-server):
the python backend marks the per-target inputs (``targets``, ``target_kinds``, ``target_data``)
``allow_ragged_batch`` and pads inside ``model.py``; the onnxruntime backend cannot pad, so its
config fixes ``target_slots`` targets per image (clients pad ids with -1, kinds and data with 0, and
read their first T). Inputs, outputs, data types and dims come from the ONNX graph; the
batch dimension is left out of ``dims`` when every input and output is batched along a dynamic first
dimension (``max_batch_size`` > 0), and other dynamic dimensions are -1.
"""

from __future__ import annotations

import json
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
GRAPHS = ("maps", "explain")  # the first the model directory holds is served
BACKENDS = ("onnxruntime", "python")
PYTHON_CONFIG = "python"  # configs/python.pbtxt: tritonserver --model-config-name=python
TARGETS = "targets"
PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX = "_preprocess", "_encoded"
_HERE = Path(__file__).parent  # the python-backend models, copied as model.py (not imported here)
ENCODED = "encoded"  # the ensemble's input: an encoded image's bytes (TYPE_UINT8 [length]) per batch item
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
    allow_ragged_batch: bool = False


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
    backend: str = BACKENDS[0]  # "onnxruntime" or "python"
    parameters: tuple[tuple[str, str], ...] = ()

    def to_pbtxt(self) -> str:
        """The configuration in protobuf text format (Triton's config.pbtxt)."""
        kind = f'platform: "{PLATFORM}"' if self.backend == "onnxruntime" else f'backend: "{self.backend}"'
        lines = [f'name: "{self.name}"', kind, f"max_batch_size: {self.max_batch_size}"]
        lines += _tensor_lines("input", self.inputs) + _tensor_lines("output", self.outputs)
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
        lines += _parameter_lines(self.parameters)
        return "\n".join(lines) + "\n"


def _tensor_lines(field: str, tensors: Sequence[TensorConfig]) -> list[str]:
    entries = [
        f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
        f"    dims: [ {', '.join(map(str, t.dims))} ]\n"
        + ("    allow_ragged_batch: true\n" if t.allow_ragged_batch else "")
        + "  }"
        for t in tensors
    ]
    return [f"{field} [", ",\n".join(entries), "]"]


def _parameter_lines(parameters: Sequence[tuple[str, str]]) -> list[str]:
    return [
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(value)} }}\n}}'
        for key, value in parameters
    ]


Tensor = tuple[str, str, list[int | None], str | None]  # name, Triton type, dims (None: dynamic), dim 1 name


def _tensors(values: Sequence[onnx.ValueInfoProto], what: str) -> list[Tensor]:
    """Graph inputs or outputs: name, Triton data type, dims (None for dynamic), the dim_param of dim 1."""
    out = []
    for value in values:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor_type.elem_type not in _DATA_TYPES:
            raise ExportError(f"graph {what} {value.name!r}: not a tensor of a type Triton knows")
        if not tensor_type.HasField("shape"):
            raise ExportError(f"graph {what} {value.name!r}: no shape (rank unknown)")
        shape = tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape]
        second = shape[1].dim_param or None if len(shape) > 1 else None
        out.append((value.name, _DATA_TYPES[tensor_type.elem_type], dims, second))
    return out


def target_outputs(graph: onnx.ModelProto) -> list[str]:
    """Outputs whose dim 1 is the ``targets`` input's (dynamic) dim 1: one entry per target."""
    return _per_target(graph, graph.graph.output, "output")


def target_inputs(graph: onnx.ModelProto) -> list[str]:
    """Inputs with one entry per target: ``targets`` and those sharing its dim 1 (``target_kinds``,
    ``target_data`` of graphs exported with target kinds)."""
    return _per_target(graph, graph.graph.input, "input")


def _per_target(graph: onnx.ModelProto, values: Sequence[onnx.ValueInfoProto], what: str) -> list[str]:
    inputs = {name: second for name, _, _, second in _tensors(graph.graph.input, "input")}
    targets = inputs.get(TARGETS)
    if targets is None:
        return []
    return [name for name, _, _, second in _tensors(values, what) if second == targets]


def triton_config(
    graph: onnx.ModelProto,
    name: str,
    *,
    backend: str = "onnxruntime",
    target_slots: int = 1,
    max_batch_size: int = 16,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 5000,
    instance_count: int = 1,
    instance_kind: str = "KIND_AUTO",
    intra_op_threads: int = 0,
) -> TritonModelConfig:
    """The Triton configuration of ``graph`` (its inputs and outputs read from the graph).

    ``backend`` "onnxruntime": the per-target inputs and outputs get ``target_slots`` as their dim 1,
    so every request carries that many targets and any two batch together. "python": that dim stays
    -1 and the per-target inputs are ``allow_ragged_batch`` (model.py pads). ``preferred_batch_sizes`` None:
    half of ``max_batch_size`` and ``max_batch_size``. ``intra_op_threads`` (python backend): ONNX
    Runtime threads per instance, 0 for its default.
    """
    if not MODEL_NAME.match(name):
        raise InvalidArgumentError("name", f"{name!r}: use letters, digits, '.', '_' and '-'")
    if backend not in BACKENDS:
        raise InvalidArgumentError("backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    if target_slots < 1:
        raise InvalidArgumentError("target_slots", f"must be at least 1, got {target_slots}")
    if max_batch_size < 1:
        raise InvalidArgumentError("max_batch_size", f"must be at least 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise InvalidArgumentError("max_queue_delay_us", f"must be >= 0, got {max_queue_delay_us}")
    if instance_count < 1:
        raise InvalidArgumentError("instance_count", f"must be at least 1, got {instance_count}")
    if intra_op_threads < 0:
        raise InvalidArgumentError("intra_op_threads", f"must be >= 0, got {intra_op_threads}")
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
    batched = all(dims and dims[0] is None for _, _, dims, _ in inputs + outputs)
    if not batched:
        max_batch_size, preferred = 0, []
    ragged_inputs = set(target_inputs(graph)) if batched else set()
    per_target = set(target_outputs(graph)) | ragged_inputs if batched else set()
    slots = target_slots if backend == "onnxruntime" else None

    def config(tensors: list[Tensor]) -> tuple[TensorConfig, ...]:
        out = []
        for name, data_type, dims, _ in tensors:
            kept = list(dims[1:] if batched else dims)
            if name in per_target and slots is not None:
                kept[0] = slots
            ragged = name in ragged_inputs and slots is None
            out.append(TensorConfig(name, data_type, tuple(-1 if d is None else d for d in kept), ragged))
        return tuple(out)

    parameters: tuple[tuple[str, str], ...] = ()
    if backend == "python":
        parameters = (
            ("target_outputs", json.dumps(sorted(per_target - ragged_inputs))),
            ("target_inputs", json.dumps(sorted(ragged_inputs))),
            ("intra_op_threads", str(intra_op_threads)),
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
        backend=backend,
        parameters=parameters,
    )


def preprocess_config(
    model: TritonModelConfig, size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> str:
    """config.pbtxt of ``<name>_preprocess``: encoded bytes -> the model's ``images`` input."""
    images = next(t for t in model.inputs if t.name == "images")
    config = TritonModelConfig(
        name=model.name + PREPROCESS_SUFFIX,
        max_batch_size=model.max_batch_size,
        inputs=(TensorConfig(ENCODED, "TYPE_UINT8", (-1,), allow_ragged_batch=True),),
        outputs=(TensorConfig("images", images.data_type, images.dims),),
        preferred_batch_sizes=(),
        max_queue_delay_us=0,
        instance_count=model.instance_count,
        instance_kind="KIND_CPU",
        backend="python",
        parameters=(
            ("size", ",".join(str(v) for v in size)),
            ("mean", ",".join(repr(float(v)) for v in mean)),
            ("std", ",".join(repr(float(v)) for v in std)),
        ),
    )
    return config.to_pbtxt()


def ensemble_config(model: TritonModelConfig) -> str:
    """config.pbtxt of ``<name>_encoded``: ``encoded`` image bytes + the model's other inputs -> the
    model's outputs, through ``<name>_preprocess`` and ``<name>``."""
    others = tuple(t for t in model.inputs if t.name != "images")
    inputs = (TensorConfig(ENCODED, "TYPE_UINT8", (-1,)), *others)
    # Ensembles have no batcher of their own: ragged batching happens in the model's scheduler.
    inputs = tuple(TensorConfig(t.name, t.data_type, t.dims) for t in inputs)
    lines = [
        f'name: "{model.name}{ENSEMBLE_SUFFIX}"',
        'platform: "ensemble"',
        f"max_batch_size: {model.max_batch_size}",
    ]
    lines += _tensor_lines("input", inputs) + _tensor_lines("output", model.outputs)

    def step(name: str, inputs: Sequence[str], outputs: Sequence[str]) -> str:
        pairs = [f'      input_map {{ key: "{k}" value: "{k}" }}' for k in inputs]
        pairs += [f'      output_map {{ key: "{k}" value: "{k}" }}' for k in outputs]
        return (
            "    {\n"
            + f'      model_name: "{name}"\n      model_version: -1\n'
            + "\n".join(pairs)
            + "\n    }"
        )

    steps = [
        step(model.name + PREPROCESS_SUFFIX, [ENCODED], ["images"]),
        step(model.name, [t.name for t in model.inputs], [t.name for t in model.outputs]),
    ]
    lines += ["ensemble_scheduling {", "  step [", ",\n".join(steps), "  ]", "}"]
    return "\n".join(lines) + "\n"


def served_graph(directory: ModelDirectory) -> str:
    """The graph a repository serves: the maps graph when the model directory has one."""
    for graph in GRAPHS:
        if directory.has_graph(graph):
            return graph
    raise ExportError(f"{directory.path}: no {' or '.join(GRAPHS)} graph to serve")


def write_triton_repository(
    model_dir: str | os.PathLike[str] | ModelDirectory,
    repository: str | os.PathLike[str],
    *,
    name: str | None = None,
    force: bool = False,
    ensemble: bool = False,
    **config: object,
) -> Path:
    """Write ``repository/<name>/`` (both backends' configs, model.onnx, model.py) and, with
    ``ensemble``, ``<name>_preprocess/`` and ``<name>_encoded/``; returns the model's folder.
    ``name`` None: the manifest's name; ``config``: the keyword arguments of :func:`triton_config`
    except ``backend``. Other models in ``repository`` are left alone; existing folders of these
    models are replaced only with ``force``."""
    directory = model_dir if isinstance(model_dir, ModelDirectory) else ModelDirectory(Path(model_dir))
    source = directory.graph_path(served_graph(directory))
    name = name or directory.name
    graph = onnx.load(str(source), load_external_data=False)
    onnx_settings = triton_config(graph, name, backend="onnxruntime", **config)  # type: ignore[arg-type]
    python_settings = triton_config(graph, name, backend="python", **config)  # type: ignore[arg-type]
    root = Path(repository)
    folders: dict[str, dict[str, str | Path]] = {
        name: {
            "config.pbtxt": onnx_settings.to_pbtxt(),
            f"configs/{PYTHON_CONFIG}.pbtxt": python_settings.to_pbtxt(),
            "1/model.onnx": source,
            "1/model.py": _HERE / "triton_python_graph.py",
        }
    }
    if ensemble:
        if onnx_settings.max_batch_size == 0 or not any(t.name == "images" for t in onnx_settings.inputs):
            raise InvalidArgumentError("ensemble", "needs a graph batched along an `images` input")
        manifest = directory.manifest
        folders[name + PREPROCESS_SUFFIX] = {
            "config.pbtxt": preprocess_config(
                onnx_settings, manifest.input_size[1:], manifest.mean, manifest.std
            ),
            "1/model.py": _HERE / "triton_python_preprocess.py",
        }
        folders[name + ENSEMBLE_SUFFIX] = {
            "config.pbtxt": ensemble_config(onnx_settings),
            f"configs/{PYTHON_CONFIG}.pbtxt": ensemble_config(python_settings),
            "1/.keep": "",  # Triton wants a version folder, even for an ensemble
        }
    for folder in folders:
        if (root / folder).exists() and not force:
            raise InvalidArgumentError(
                "triton_repository", f"{root / folder} exists; pass --force to replace it"
            )
    root.mkdir(parents=True, exist_ok=True)
    for folder, files in folders.items():
        _write_folder(root, folder, files)
    return root / name


def _write_folder(root: Path, folder: str, files: dict[str, str | Path]) -> None:
    """Write ``root/folder`` next to it and move it in at the end: a failure leaves nothing half-written."""
    target = root / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=root))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        for relative, content in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, path)
            else:
                path.write_text(content)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
