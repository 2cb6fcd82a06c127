"""Is an exported graph the function it was traced from? ONNX Runtime vs eager PyTorch, once per export.

Values (logits, activations) are continuous functions of the input: ONNX Runtime must reproduce them
to 1e-3 of their largest value. Gradients are not: a ReLU whose input lies within float32 rounding of
zero is on in one runtime and off in the other, and a flipped unit adds or drops its whole backward
path (a rank-1 term in VGG's 4096-unit MLP head, a patch of the image under guided backprop). Such a
flip moves single elements by more than 1e-3 of the maximum while leaving each gradient map
essentially unchanged, so gradients are compared per image and target, by their relative L2 error
‖got - want‖ / ‖want‖ — the measure a wrong graph cannot meet: a flipped sign gives 2, a wrong
weight or a misplaced window gives errors of its own relative size (several percent and up), while
float32 flips measured across the 14 architectures stay below 1e-3 (see docs/export.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from camserve.errors import ExportError
from camserve.methods.target_kinds import IMAGE_KINDS, KIND_CODE, TargetSpec, TargetTable

VALUE_TOLERANCE = 1e-3  # max abs error / max |value|
GRADIENT_TOLERANCE = 1e-2  # per image and target: ‖error‖₂ / ‖gradient‖₂
# [N, T, ...]: one gradient map per (image, target); FullGrad's maps are sums of normalised ones
GRADIENT_OUTPUTS = ("gradients", "input_gradients", "fullgradient_maps")


def disagreement(name: str, got: np.ndarray, want: np.ndarray) -> str | None:
    """Why ``got`` (ONNX Runtime) is not ``want`` (PyTorch) for output ``name``; None when it is."""
    if got.shape != want.shape:
        return f"shape {got.shape} instead of {want.shape}"
    if not np.issubdtype(want.dtype, np.floating):
        return None if np.array_equal(got, want) else "different values"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    if err <= VALUE_TOLERANCE:
        return None
    if name not in GRADIENT_OUTPUTS:
        return f"max error {err:.2e} of its largest value"
    rows_got = got.reshape(got.shape[0] * got.shape[1], -1).astype(np.float64)
    rows_want = want.reshape(rows_got.shape).astype(np.float64)
    norms = np.maximum(np.linalg.norm(rows_want, axis=1), 1e-30 * scale)
    rel = np.linalg.norm(rows_got - rows_want, axis=1) / norms
    worst = int(rel.argmax())
    if rel[worst] <= GRADIENT_TOLERANCE:
        return None  # float32 ReLU flips: single elements moved, every gradient map the same
    image, target = divmod(worst, got.shape[1])
    return (
        f"relative L2 error {rel[worst]:.2e} for image {image}, target {target} "
        f"(max error {err:.2e} of its largest value)"
    )


def fresh_inputs(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A batch one larger than the traced one: int64 inputs (targets) gain a copy of their first row,
    float inputs are fresh normal samples with the traced input's mean and std."""
    gen = torch.Generator().manual_seed(1)
    fresh = []
    for x in inputs:
        if x.dtype == torch.int64:
            fresh.append(torch.cat([x, x[:1]]))
        else:
            fresh.append(torch.randn(x.shape[0] + 1, *x.shape[1:], generator=gen) * x.std() + x.mean())
    return fresh


def example_table(
    spec: TargetSpec, num_images: int, num_targets: int, seed: int, boxes: torch.Tensor | None = None
) -> TargetTable:
    """Targets [N,T] mixing every target kind of ``spec``'s output kind (kinds cycle over the N·T
    entries), class ids with ranks (-1, -2): random masks for regions, random concepts, the next
    image for ``*_image``; detection boxes are anchor boxes of ``boxes`` [N,A,4] (the model's, so
    that they match), else random boxes inside the input."""
    gen = torch.Generator().manual_seed(seed)
    n, t = num_images, num_targets
    k = torch.arange(n * t).reshape(n, t)
    codes = torch.tensor([KIND_CODE[kind] for kind in spec.kinds])
    kinds = codes[k % len(codes)]
    ids = torch.where(k % 2 == 0, -(1 + (k // 2) % 2), (k // 2) % spec.num_classes)
    image_kind = torch.zeros_like(kinds, dtype=torch.bool)
    for kind in IMAGE_KINDS:
        image_kind |= kinds == KIND_CODE[kind]
    length = spec.data_length
    data = None
    if spec.output_kind == "dense":
        data = (torch.rand(n, t, length, generator=gen) < 0.5).float()
    elif spec.output_kind == "embedding":
        ids = torch.where(image_kind, (torch.arange(n).reshape(n, 1) + 1) % n, 0).expand(n, t).contiguous()
        data = torch.randn(n, t, length, generator=gen) * (~image_kind).unsqueeze(2)
    elif spec.output_kind == "detection":
        if boxes is not None:
            anchors = (7 * k + 3) % boxes.shape[1]
            data = boxes.gather(1, anchors.unsqueeze(2).expand(n, t, 4)).float()
        else:
            height, width = spec.input_size
            corner = torch.rand(n, t, 2, generator=gen) * 0.5
            extent = 0.1 + torch.rand(n, t, 2, generator=gen) * 0.4
            scale = torch.tensor([width, height], dtype=torch.float32)
            data = torch.cat([corner * scale, (corner + extent) * scale], dim=2)
    return TargetTable(ids, kinds, data)


def verify_graph(
    graph: str,
    path: Path,
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    in_names: Sequence[str],
    fresh: Sequence[torch.Tensor] | None = None,
) -> None:
    """The ONNX graph must give the eager function's numbers on a fresh batch, one image larger
    than the traced one (which checks the dynamic batch dimension too), or on ``fresh``."""
    import onnxruntime as ort

    fresh = fresh_inputs(inputs) if fresh is None else list(fresh)
    with torch.no_grad():
        expected = fn(*fresh)
    expected = expected if isinstance(expected, tuple) else (expected,)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in zip(in_names, fresh, strict=True)})
    except Exception as exc:  # ONNX Runtime rejects the graph: report it as an export failure
        raise ExportError(f"ONNX Runtime cannot run the exported {graph} graph: {exc}") from exc
    for out, value, want in zip(session.get_outputs(), got, expected, strict=True):
        why = disagreement(out.name, np.asarray(value), want.numpy())
        if why is not None:
            raise ExportError(
                f"the exported {graph} graph disagrees with PyTorch on output {out.name!r}: {why}"
            )
