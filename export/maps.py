"""The maps graph: ``maps.onnx``, the explain graph followed by the CAM maths as ONNX operators, so any
ONNX Runtime (Triton's onnxruntime backend, Node.js, a browser) returns the final maps::

    images [N,C,H,W] float32, targets [N,T] int64, target_kinds [N,T] int64 (+ target_data [N,T,L])
      -> logits [N,C], target_ids [N,T], maps_<method> [N,T,H',W'] (one per method, ``++`` -> ``pp``)

Its inputs are the explain graph's (``Manifest.explain_inputs``: an export from before target kinds
takes images and targets only).

Built by composition, not by tracing the model again: the maths (``kernels.reference``, the numbers
camserve's methods use) is exported on its own as a small graph whose inputs are the explain graph's
outputs, and the two graphs are joined node for node. It costs seconds whatever the model, and can be
added to an existing model directory without the PyTorch model (:func:`add_maps_graph`).

Verified like the other graphs (:func:`verify_maps_graph`): on a fresh batch, its maps must equal
camserve's own (``camserve.methods`` on the explain graph's outputs, torch reference kernels) to
1e-5, uint8 maps to one step, and its logits and target ids the explain graph's.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from camserve import defaults
from camserve.config import ExplainOptions, RuntimeConfig, parse_output_size
from camserve.errors import ExportError, InvalidArgumentError
from camserve.export.tracing import OPSET
from camserve.export.verification import disagreement, example_table
from camserve.kernels import reference
from camserve.methods import get_method, known_methods, method_class
from camserve.methods.target_kinds import TargetSpec, TargetTable
from camserve.modeldir import MANIFEST_NAME, GraphFile, MapsGraph, ModelDirectory, sha256_file
from camserve.outputs import ExplainOutputs

GRAPH = "maps"
FILE = "maps.onnx"
MAPS_TOLERANCE = 1e-5  # max |maps.onnx - camserve| of maps in [0, 1]
DTYPES = ("float32", "uint8")
_PREFIX = "camserve_maps/"  # the maths graph's own names, kept apart from the explain graph's

DEFAULT_METHODS = defaults.MAPS_METHODS


def graph_methods() -> list[str]:
    """The registered methods the maps graph can hold (``CamMethod.not_in_graph`` empty)."""
    return [name for name in known_methods() if not method_class(name).not_in_graph]


def output_name(method: str) -> str:
    """The graph output of ``method``'s maps: maps_gradcam, maps_gradcampp, ..."""
    return "maps_" + re.sub(r"[^A-Za-z0-9_]", "_", method.replace("++", "pp"))


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, duplicates dropped; InvalidArgumentError("maps", ...) for one the graph cannot hold."""
    chosen = list(dict.fromkeys(m.strip() for m in methods if m.strip()))
    if not chosen:
        raise InvalidArgumentError("maps", "no method given")
    for method in chosen:
        reason = method_class(method).not_in_graph  # an unknown name: InvalidArgumentError listing them
        if reason:
            raise InvalidArgumentError(
                "maps",
                f"{method!r} cannot be in the maps graph: {reason}; choose from {', '.join(graph_methods())}",
            )
    return chosen


class _MapsMaths(nn.Module):
    """activations [N,K,h,w], gradients [N,T,K,h,w], target_ids [N,T] -> one map per method."""

    def __init__(
        self,
        methods: Sequence[str],
        size: tuple[int, int],
        eps: float,
        dtype: str,
        class_weights: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.methods, self.size, self.eps, self.uint8 = list(methods), size, eps, dtype == "uint8"
        self.objects = [get_method(name) for name in methods]
        self.class_weights = class_weights

    def forward(
        self, activations: torch.Tensor, gradients: torch.Tensor, target_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = []
        for method in self.objects:
            raw = method.graph_maps(activations, gradients, target_ids, self.class_weights)
            maps = reference.upsample_normalize(raw, self.size, True, self.eps)
            out.append(reference.quantize_uint8(maps) if self.uint8 else maps)
        return tuple(out)


def _export_maths(maths: _MapsMaths, explain: onnx.ModelProto) -> onnx.ModelProto:
    """The maths alone as ONNX, its inputs named (and shaped) as the explain graph's outputs."""
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in explain.graph.output}
    k, h, w = shapes["activations"][1:]
    num_classes = shapes["logits"][1]
    acts = torch.rand(2, k, h, w, generator=torch.Generator().manual_seed(0))
    grads = torch.randn(2, 3, k, h, w, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(6).reshape(2, 3) % num_classes
    maths(acts, grads, ids)  # eagerly first: a method's own refusal (CAM without W) is its message
    inputs = ["activations", "gradients", "target_ids"]
    dynamic = {"activations": {0: "batch"}, "gradients": {0: "batch", 1: "targets"}}
    dynamic["target_ids"] = {0: "batch", 1: "targets"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "maths.onnx"
        try:
            # The TorchScript exporter: ~1 s for these few operators, where the dynamo exporter's
            # tracing and decompositions take 10 s and more. The maths has no autograd, no data-
            # dependent branch and no dynamic size but N and T; the verification checks the result.
            torch.onnx.export(
                maths,
                (acts, grads, ids),
                str(path),
                input_names=inputs,
                output_names=[output_name(m) for m in maths.methods],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"ONNX export of the maps maths failed: {type(exc).__name__}: {exc}") from exc
        return onnx.load(str(path))


def _dim_renames(explain: onnx.ModelProto) -> dict[str, str]:
    """The explain graph's symbols of N and T (the exporter's s0, s1, ...) -> "batch", "targets"."""
    (targets,) = [i for i in explain.graph.input if i.name == "targets"]
    n, t = (d.dim_param for d in targets.type.tensor_type.shape.dim)
    return {n: "batch", t: "targets"}


def _rename_dims(values: Sequence[onnx.ValueInfoProto], renames: dict[str, str]) -> None:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)


def compose(explain: onnx.ModelProto, maths: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """explain's nodes, then the maths' nodes reading explain's outputs by name; outputs logits,
    target_ids and the maths' outputs, declared [batch, targets, H', W']."""
    maths = onnx.compose.add_prefix(maths, _PREFIX, rename_inputs=False, rename_outputs=False)
    by_name = {o.name: o for o in explain.graph.output}
    maps_outputs = [
        onnx.helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, ["batch", "targets", *size])
        for o in maths.graph.output
    ]
    graph = onnx.helper.make_graph(
        nodes=[*explain.graph.node, *maths.graph.node],
        name="camserve_maps",
        inputs=list(explain.graph.input),
        outputs=[by_name["logits"], by_name["target_ids"], *maps_outputs],
        initializer=[*explain.graph.initializer, *maths.graph.initializer],
        value_info=[*explain.graph.value_info, *maths.graph.value_info],
        doc_string="camserve maps graph: images, targets -> logits, target_ids, maps_<method> [N,T,H',W']",
    )
    _rename_dims([*graph.input, *graph.output, *graph.value_info], _dim_renames(explain))
    opsets: dict[str, int] = {}
    for entry in [*explain.opset_import, *maths.opset_import]:
        opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=max(explain.ir_version, maths.ir_version),
        producer_name="camserve",
    )
    model.functions.extend([*explain.functions, *maths.functions])
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class MapsOptions:
    """What the maps graph computes: ``methods`` (``graph_methods()``), maps of ``output_size``
    ("input", "feature" or "HxW", as ``ExplainOptions.output_size``) and ``dtype``, min-max with ``eps``."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    output_size: str = defaults.OUTPUT_SIZE
    dtype: str = "float32"
    eps: float = ExplainOptions.eps

    def check(self) -> list[str]:
        """The methods to write; InvalidArgumentError naming the bad option."""
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(
                "maps_dtype", f"expected one of {', '.join(DTYPES)}, got {self.dtype!r}"
            )
        parse_output_size(self.output_size, "maps_size")
        return check_methods(self.methods)

    def write(
        self,
        directory: Path,
        cam_weights: GraphFile | None,
        verify: bool = True,
        spec: TargetSpec | None = None,
    ) -> MapsGraph:
        """Write ``directory``/maps.onnx from the explain graph and CAM's weights in ``directory``."""
        weights = None if cam_weights is None else _class_weights(directory / cam_weights.file)
        return write_maps_graph(directory / "explain.onnx", directory / FILE, self, weights, verify, spec)


def write_maps_graph(
    explain_path: Path,
    out_path: Path,
    options: MapsOptions,
    class_weights: np.ndarray | None = None,
    verify: bool = True,
    spec: TargetSpec | None = None,
) -> MapsGraph:
    """Write ``out_path`` from the explain graph at ``explain_path``; returns its description.
    ``spec``: the model's targets (its verification feeds every target kind); None: class ids."""
    methods = options.check()
    explain = onnx.load(str(explain_path))
    activations = [o for o in explain.graph.output if o.name == "activations"][0]
    feature_hw = [d.dim_value for d in activations.type.tensor_type.shape.dim][2:]
    input_hw = [d.dim_value for d in explain.graph.input[0].type.tensor_type.shape.dim][2:]
    parsed = parse_output_size(options.output_size, "maps_size")
    picked = {"input": input_hw, "feature": feature_hw}.get(parsed) if isinstance(parsed, str) else parsed
    assert picked is not None
    size = (int(picked[0]), int(picked[1]))
    weights = None if class_weights is None else torch.from_numpy(np.asarray(class_weights, np.float32))
    maths = _MapsMaths(methods, size, options.eps, options.dtype, weights)
    onnx.save(compose(explain, _export_maths(maths, explain), size), str(out_path))
    initializers = {init.name for init in explain.graph.initializer}
    info = MapsGraph(
        methods=methods,
        inputs=[i.name for i in explain.graph.input if i.name not in initializers],
        outputs=["logits", "target_ids", *(output_name(m) for m in methods)],
        size=list(size),
        dtype=options.dtype,
        eps=float(options.eps),
    )
    if verify:
        verify_maps_graph(out_path, explain_path, info, class_weights, spec)
    return info


def graph_feed(
    session_inputs: Sequence[str], images: torch.Tensor, table: TargetTable
) -> dict[str, np.ndarray]:
    """The inputs of an explain (or maps) graph, by name: those it declares (an export from before
    target kinds has images and targets only)."""
    values = {"images": images, "targets": table.ids, "target_kinds": table.kinds, "target_data": table.data}
    feed = {}
    for name in session_inputs:
        value = values.get(name)
        if value is None:
            raise ExportError(f"the graph's input {name!r} has no value here")
        feed[name] = value.numpy()
    return feed


class _ExplainSession:
    """The GraphRunner's explain() (and forward(), from the explain graph) on one ONNX Runtime
    session: what camserve's runner computes."""

    def __init__(self, path: Path, spec: TargetSpec | None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.spec = spec

    def explain(self, images: torch.Tensor, targets: TargetTable) -> ExplainOutputs:
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(None, graph_feed(self.inputs, images, targets)), strict=True))
        t = {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}
        return ExplainOutputs(
            t["logits"],
            t["activations"],
            t["gradients"],
            t["target_ids"],
            t.get("extra_tokens"),
            t.get("target_scores"),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (they do not depend on the targets)."""
        ids = torch.zeros(images.shape[0], 1, dtype=torch.int64)
        return self.explain(images, TargetTable.of_ids(ids, self.spec)).logits


def verify_maps_graph(
    maps_path: Path,
    explain_path: Path,
    info: MapsGraph,
    class_weights: np.ndarray | None,
    spec: TargetSpec | None = None,
) -> None:
    """maps.onnx must give camserve's maps, computed by ``camserve.methods`` from explain.onnx's
    outputs, on a fresh batch (4 images, 3 targets: ids and ranks; with ``spec`` and a graph that
    takes target kinds, every kind of the output kind)."""
    import onnxruntime as ort

    from camserve.methods.compute import compute_maps

    explain = _ExplainSession(explain_path, None)
    (images_info,) = [i for i in explain.session.get_inputs() if i.name == "images"]
    num_classes = int(explain.session.get_outputs()[0].shape[1])
    images = torch.randn(4, *images_info.shape[1:], generator=torch.Generator().manual_seed(1))
    if spec is not None and "target_kinds" in explain.inputs:
        explain.spec = spec
        table = example_table(spec, 4, 3, seed=1)
        if any(method_class(m).logit_targets_only for m in info.methods):
            table = TargetTable.of_ids(table.ids, spec)  # CAM reads class logits: their default kind only
    else:  # an explain graph from before target kinds: class ids (logits)
        spec = None
        k = torch.arange(12).reshape(4, 3)
        table = TargetTable.of_ids(torch.where(k % 2 == 0, -(1 + k % 3), k % num_classes))
    options = ExplainOptions(output_size=f"{info.size[0]}x{info.size[1]}", eps=info.eps)
    want = compute_maps(
        explain,  # type: ignore[arg-type]  # only explain() and forward() are called for these methods
        images,
        table,
        info.methods,
        spec=spec,
        num_classes=num_classes,
        options=options,
        runtime=RuntimeConfig(kernels="torch"),
        cam_weights=None if class_weights is None else torch.from_numpy(class_weights),
    )
    try:
        session = ort.InferenceSession(str(maps_path), providers=["CPUExecutionProvider"])
        feed = graph_feed([i.name for i in session.get_inputs()], images, table)
        values = session.run(info.outputs, feed)
        got = dict(zip(info.outputs, values, strict=True))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the maps graph: {exc}") from exc
    problems = []
    why = disagreement("logits", got["logits"], want.logits.numpy())
    if why is not None:
        problems.append(f"logits: {why}")
    if not np.array_equal(got["target_ids"], want.target_ids.numpy()):
        problems.append("target_ids differ")
    for method in info.methods:
        maps = want.maps[method]
        name = output_name(method)
        tolerance = 1.0 if info.dtype == "uint8" else MAPS_TOLERANCE  # uint8: one step of 255
        expected = reference.quantize_uint8(maps).numpy() if info.dtype == "uint8" else maps.numpy()
        actual = got[name]
        if actual.shape != expected.shape:
            problems.append(f"{name}: shape {actual.shape} instead of {expected.shape}")
            continue
        err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
        if err > tolerance:
            problems.append(f"{name}: max error {err:.2e} > {tolerance:g}")
    if problems:
        raise ExportError("the maps graph disagrees with camserve's maps: " + "; ".join(problems))


def _class_weights(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return np.asarray(data["weight"], np.float32)


def add_maps_graph(
    model_dir: str | Path, options: MapsOptions | None = None, verify: bool = True
) -> ModelDirectory:
    """Add (or replace) maps.onnx in an existing model directory, from its explain graph; the
    manifest is rewritten last, by rename."""
    directory = ModelDirectory(model_dir)
    staged = Path(tempfile.mkstemp(prefix=".maps.", suffix=".onnx", dir=directory.path)[1])
    manifest_tmp = directory.path / f".{MANIFEST_NAME}.tmp"
    try:
        cam = directory.manifest.cam_weights
        weights = None if cam is None else _class_weights(directory.path / cam.file)
        info = write_maps_graph(
            directory.graph_path("explain"),
            staged,
            options or MapsOptions(),
            weights,
            verify,
            directory.manifest.target_spec(),
        )
        os.replace(staged, directory.path / FILE)
        manifest = directory.manifest
        manifest.graphs[GRAPH] = GraphFile(FILE, sha256_file(directory.path / FILE))
        manifest.maps = info
        manifest_tmp.write_text(manifest.to_json())
        os.replace(manifest_tmp, directory.path / MANIFEST_NAME)
    finally:
        staged.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)
    return ModelDirectory(directory.path)
