"""``export_model``: a PyTorch model + a target layer -> a model directory.

Everything is written to a temporary directory beside ``out_dir`` and renamed into place at the
end, so a failed export leaves nothing half-written. Each graph is checked against the eager
PyTorch functions it was traced from before the directory is published.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import camserve
from camserve.errors import ExportError, InvalidArgumentError, NotFoundError
from camserve.export.graphs import OutputKey, SplitModel
from camserve.export.maps import FILE as MAPS_FILE
from camserve.export.maps import GRAPH as MAPS_GRAPH
from camserve.export.maps import MapsOptions
from camserve.export.tracing import OPSET, export_onnx
from camserve.export.verification import example_table, verify_graph
from camserve.modeldir import GraphFile, Manifest, ModelDirectory, sha256_file

log = logging.getLogger(__name__)

GRAPHS = ("explain", "forward", "head", "guided", "fullgradient")
#: what ``export_model`` and ``camserve export`` write unless told: the fullgradient graph (a forward and
#: a backward pass through the whole network, about the guided graph's size and export time) on request
DEFAULT_GRAPHS = ("explain", "forward", "head", "guided")
_BATCH = {0: "batch"}


def export_model(
    model: nn.Module,
    layer: str,
    input_size: Sequence[int],
    out_dir: str | Path,
    *,
    name: str,
    architecture: str,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    force: bool = False,
    layout: str | None = None,
    prefix_tokens: int | None = None,
    graphs: Sequence[str] = DEFAULT_GRAPHS,
    verify: bool = True,
    maps: MapsOptions | None = None,
    output: OutputKey = None,
    output_kind: str | None = None,
    boxes_output: OutputKey = None,
) -> ModelDirectory:
    """Export ``model`` cut at ``layer`` to ``out_dir``; the model itself is not modified. With
    ``maps``, also the maps graph (``camserve.export.maps``).

    ``output`` (a dict key or an index; None: the first) picks the explained output of a model that
    returns a tuple or a dict; ``output_kind`` (classification, dense, detection, embedding; None:
    2-D classification, 4-D dense) says what it is; detection: ``output`` the raw scores [N,A,C],
    ``boxes_output`` the boxes [N,A,4] (x1, y1, x2, y2 input pixels, before NMS)."""
    out_dir = Path(out_dir)
    input_size = _check_input_size(input_size)
    _check_normalisation(mean, std, input_size[0])
    unknown = set(graphs) - set(GRAPHS)
    if unknown or "explain" not in graphs:
        raise InvalidArgumentError("graphs", f"choose from {', '.join(GRAPHS)} (explain is required)")
    if out_dir.exists() and not force:
        raise ExportError(f"output directory {out_dir} exists; pass --force (force=True) to replace it")
    if maps is not None:
        maps.check()  # before the minutes of tracing
    split = SplitModel(
        model,
        layer,
        input_size,
        layout=layout,
        prefix_tokens=prefix_tokens,
        output=output,
        output_kind=output_kind,
        boxes_output=boxes_output,
    )
    if class_names is None:
        class_names = [str(i) for i in range(split.num_classes)]
    if len(class_names) != split.num_classes:
        raise InvalidArgumentError(
            "class_names", f"{len(class_names)} names for a model with {split.num_classes} classes"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files, acts_shape, cam, explain_inputs = _write_graphs(split, staging, graphs, verify)
        maps_info = None
        if maps is not None:
            maps_info = maps.write(staging, cam, verify, split.target_spec)
            files[MAPS_GRAPH] = GraphFile(MAPS_FILE, sha256_file(staging / MAPS_FILE))
        manifest = Manifest(
            name=name,
            architecture=architecture,
            target_layer=layer,
            input_size=list(input_size),
            mean=[float(v) for v in mean],
            std=[float(v) for v in std],
            class_names=list(class_names),
            activation_shape=list(acts_shape),
            layout=split.layout.kind,
            prefix_tokens=split.layout.prefix,
            output_kind=split.output_kind,
            output_shape=list(split.output_shape),
            explain_inputs=explain_inputs,
            outputs=list(split.output_names),
            output=None if output is None else str(output),
            boxes_output=None if boxes_output is None else str(boxes_output),
            notes=_non_cut_notes(split),
            graphs=files,
            cam_weights=cam,
            maps=maps_info,
            versions=_versions(),
            opset=OPSET,
        )
        (staging / "manifest.json").write_text(manifest.to_json())
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s (layer %s) to %s", name, layer, out_dir)
    return ModelDirectory(out_dir)


def _non_cut_notes(split: SplitModel) -> dict[str, object]:
    """For a layer that is not a cut: where the head re-enters, and the per-image shape of the head's
    extra input (``extra_tokens``: the anchor's input), for runners that allocate outputs up front."""
    if split.anchor is None:
        return {}
    return {"anchor": split.anchor.name, "extra_shape": list(split.anchor.shape)}


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    """[C, H, W]: any number of channels (1 greyscale, 3 RGB, 4+ multispectral), H and W apart."""
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise InvalidArgumentError("input_size", f"expected CxHxW with C, H, W >= 1, got {size}")
    return size


def _check_normalisation(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """One mean and one std per input channel; std > 0 (it divides)."""
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise InvalidArgumentError(
                name, f"expected {channels} values (one per input channel), got {len(values)}"
            )
    if not all(float(v) > 0 for v in std):
        raise InvalidArgumentError("std", f"every value must be > 0, got {[float(v) for v in std]}")


def _example_inputs(split: SplitModel, num_images: int, seed: int) -> tuple[torch.Tensor, ...]:
    """images [N,C,H,W], targets, target_kinds [N,3] (and target_data [N,3,L]) mixing every target
    kind of the output kind, class ids and ranks (``example_table``). Traced with N = 2 and verified
    with N = 3: the batch and the number of targets differ, so a graph that mixes them up fails its
    verification."""
    images = torch.randn(num_images, *split.input_size, generator=torch.Generator().manual_seed(seed))
    boxes = None
    if split.output_kind == "detection":
        with torch.no_grad():
            boxes = split._pick(split.model(images))[1]
    table = example_table(split.target_spec, num_images, 3, seed, boxes)
    inputs = (images, table.ids, table.kinds)
    return inputs if table.data is None else (*inputs, table.data)


def _write_graphs(
    split: SplitModel, staging: Path, graphs: Sequence[str], verify: bool
) -> tuple[dict[str, GraphFile], tuple[int, ...], GraphFile | None, list[str]]:
    example = _example_inputs(split, 2, seed=0)
    fresh = _example_inputs(split, 3, seed=1)
    with torch.no_grad():
        reference = split.explain(*example)
    tokens = split.extra_shape is not None  # the head also needs ``extra_tokens``
    acts, extra = reference[1], (reference[5] if tokens else None)
    head_inputs: tuple[torch.Tensor, ...] = (acts, extra) if extra is not None else (acts,)
    target_names = ["images", "targets", "target_kinds", "target_data"][: len(example)]
    target_dims = {name: {0: "batch", 1: "targets"} for name in target_names[1:]}
    GraphSpec = tuple[
        Callable[..., Any],
        tuple[torch.Tensor, ...],
        tuple[torch.Tensor, ...],
        list[str],
        list[str],
        dict[str, dict[int, str]],
    ]
    specs: dict[str, GraphSpec] = {
        "explain": (
            split.explain,
            example,
            fresh,
            target_names,
            ["logits", "activations", "gradients", "target_ids", "target_scores"]
            + (["extra_tokens"] if tokens else []),
            {"images": _BATCH, **target_dims},
        ),
        "forward": (split.forward, example[:1], fresh[:1], ["images"], ["logits"], {"images": _BATCH}),
        "head": (
            split.head,
            head_inputs,
            (),
            ["activations"] + (["extra_tokens"] if tokens else []),
            ["logits"],
            {"activations": _BATCH, "extra_tokens": _BATCH},
        ),
        "guided": (
            split.guided,
            example,
            fresh,
            target_names,
            ["input_gradients"],
            {"images": _BATCH, **target_dims},
        ),
        "fullgradient": (
            split.fullgradient,  # class logits only: images and class ids
            example[:2],
            fresh[:2],
            ["images", "targets"],
            ["fullgradient_maps"],
            {"images": _BATCH, "targets": {0: "batch", 1: "targets"}},
        ),
    }
    files: dict[str, GraphFile] = {}
    for graph in graphs:
        fn, inputs, fresh_inputs, in_names, out_names, dims = specs[graph]
        path = staging / f"{graph}.onnx"
        log.info("tracing the %s graph", graph)
        export_onnx(fn, inputs, in_names, out_names, dims, path)
        if verify:
            verify_graph(graph, path, fn, inputs, in_names, fresh_inputs or None)
        files[graph] = GraphFile(path.name, sha256_file(path))
    # CAM's class weights: only a classifier's logits are a GAP -> linear head of classes
    cam = _cam_weights(split, acts, extra, staging) if split.output_kind == "classification" else None
    return files, tuple(acts.shape[1:]), cam, target_names


def _cam_weights(
    split: SplitModel, acts: torch.Tensor, extra: torch.Tensor | None, staging: Path
) -> GraphFile | None:
    """If the head is GAP -> linear (logits = W · mean_ij A + b), save W [C,K] and b [C] for CAM.

    Found numerically, without knowing the architecture: spatially constant one-hot activations give
    the columns of W, and a random activation must then be reproduced exactly. Two cheap necessary
    conditions come first (a few head runs instead of K): the logits must not change when the
    pixels are shuffled, and the head must be affine (head(2P) - b = 2 (head(P) - b)).
    """
    k = acts.shape[1]
    h, w = acts.shape[2:]
    extra1 = None if extra is None else extra[:1]

    def close(got: torch.Tensor, want: torch.Tensor) -> bool:
        return torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))

    with torch.no_grad():
        bias = split.head(acts.new_zeros(1, k, h, w), extra1)[0]
        probe = torch.randn(2, k, h, w, generator=torch.Generator().manual_seed(2)).abs()
        ex = None if extra is None else extra[:1].expand(2, *extra.shape[1:])
        got = split.head(probe, ex)
        order = torch.randperm(h * w, generator=torch.Generator().manual_seed(3))
        shuffled = probe.flatten(2)[:, :, order].reshape(probe.shape)
        if not close(split.head(shuffled, ex), got) or not close(
            split.head(2 * probe, ex) - bias, 2 * (got - bias)
        ):
            return None
        columns = []
        for start in range(0, k, 256):
            stop = min(start + 256, k)
            basis = torch.zeros(stop - start, k, h, w)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            ex = None if extra is None else extra[:1].expand(stop - start, *extra.shape[1:])
            columns.append(split.head(basis, ex) - bias)
        weight = torch.cat(columns).t()  # [C, K]
    if not close(probe.mean(dim=(2, 3)) @ weight.t() + bias, got):
        return None
    path = staging / "cam_weights.npz"
    np.savez(path, weight=weight.numpy().astype(np.float32), bias=bias.numpy().astype(np.float32))
    return GraphFile(path.name, sha256_file(path))


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        old.rmdir()
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "camserve": camserve.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict (or a checkpoint holding one under 'state_dict' / 'model') into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgumentError(
            "weights", f"{path} is not a readable PyTorch weights file ({exc})"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise InvalidArgumentError("weights", f"{path} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:4])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
        raise InvalidArgumentError("weights", f"{path} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def build_from_import_path(spec: str) -> nn.Module:
    """``package.module:factory`` -> factory() (a callable returning an nn.Module, or a Module class)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError("module", f"expected 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(f"cannot import {module_name!r}: {exc}") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise NotFoundError(f"{module_name!r} has no attribute {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError("module", f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model
