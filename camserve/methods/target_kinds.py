"""Targets as data: what scalar of a model's output a map explains, for every kind of output.

A model's *output kind* (``Manifest.output_kind``) decides which *target kinds* it takes:

================  ==========================================  ======================================
output kind       explained output (per image)                 target kinds (the scalar s explained)
================  ==========================================  ======================================
classification    logits y [C]                                  ``logit`` y_c; ``probability``
                                                                softmax(y)_c; ``sigmoid`` σ(y_c)
                                                                (multi-label)
dense             logits y [C,h',w'] (segmentation)             ``region`` Σ_ij m_ij y_cij over a
                                                                mask m (given, or from a box);
                                                                ``predicted_region``: m = [argmax_k
                                                                y_kij = c] (pytorch-grad-cam's
                                                                SemanticSegmentationTarget)
detection         raw head: scores [A,C] (pre-sigmoid) and      ``box``: Σ_a m_a scores_ac over the
                  boxes [A,4] (x1,y1,x2,y2 input pixels),       anchors a whose box has IoU >= 0.5
                  before NMS                                    with the target box (and always the
                                                                best-matching one)
embedding         e [D]                                         ``dot`` e·v, ``cosine`` cos(e, v) to a
                                                                concept v [D]; ``dot_image`` /
                                                                ``cosine_image``: v = the embedding
                                                                of image j of the same batch
================  ==========================================  ======================================

``class_id`` is a class (or -k: the k-th best class of the image's *class scores*, see
:func:`class_scores`) for every kind but the embedding ones. In a batch, targets form a
:class:`TargetTable`: ``ids`` [N,T] (class ids; the image index j for ``*_image``), ``kinds`` [N,T]
(codes: indices into :data:`TARGET_KINDS`, fixed forever: they are graph inputs and wire values) and
``data`` [N,T,L] float32 (dense: the mask flattened, L = h'·w'; detection: the box, L = 4;
embedding: the concept vector, L = D; classification: none). The explain graph takes all three, so
one graph serves every target of its output's kind and many targets of any kinds stay one run.
:func:`target_scores` is the one definition of the scalars: the export traces it, the eager
runner calls it, tests compare it with autograd of the same scalar written by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camserve.config import check_target
from camserve.errors import InvalidArgumentError

#: Target kinds; a kind's code is its index here (graph input ``target_kinds``, wire enum values).
TARGET_KINDS: tuple[str, ...] = (
    "logit",
    "probability",
    "sigmoid",
    "region",
    "predicted_region",
    "box",
    "dot",
    "cosine",
    "dot_image",
    "cosine_image",
)
KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(TARGET_KINDS)}

#: Output kinds and the target kinds each takes; the first is the default (an int target).
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "classification": ("logit", "probability", "sigmoid"),
    "dense": ("predicted_region", "region"),
    "detection": ("box",),
    "embedding": ("cosine", "dot", "cosine_image", "dot_image"),
}
IMAGE_KINDS = ("dot_image", "cosine_image")
BOX_MATCH_IOU = 0.5  # detection targets: anchors matched at IoU >= this (and the best one)


@dataclass(frozen=True, eq=False)
class Target:
    """One target of one image. Plain ``int`` targets stand for ``Target(default kind, class_id)``.

    kind      one of the model's target kinds (``TargetSpec.kinds``)
    class_id  class id, or -k for the k-th best class (not used by the embedding kinds)
    mask      region: weights [h',w'] on the dense output's grid (bool or float)
    box       region (the output cells whose centres lie inside it) or box: x1, y1, x2, y2 in
              input pixels (the model input's H x W, after resizing)
    vector    dot / cosine: the concept vector [D]
    image     dot_image / cosine_image: the index of the other image in the batch or request
    """

    kind: str = "logit"
    class_id: int = -1
    mask: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    vector: np.ndarray | None = None
    image: int | None = None


@dataclass(frozen=True)
class TargetSpec:
    """What targets a model takes (from its manifest): output kind, classes, output shape."""

    output_kind: str
    num_classes: int
    output_shape: tuple[int, ...]  # per image: [C] | [C,h',w'] | [A,C] | [D]
    input_size: tuple[int, int]  # (H, W) of the model input: boxes are in these pixels

    @property
    def kinds(self) -> tuple[str, ...]:
        return OUTPUT_KINDS[self.output_kind]

    @property
    def data_length(self) -> int:
        """L: per-target floats of the ``target_data`` graph input (0: the graph has none)."""
        if self.output_kind == "dense":
            return int(self.output_shape[1] * self.output_shape[2])
        if self.output_kind == "detection":
            return 4
        if self.output_kind == "embedding":
            return int(self.output_shape[0])
        return 0


@dataclass
class TargetTable:
    """The targets of a batch as graph inputs: ids [N,T] int64, kinds [N,T] int64, data [N,T,L]."""

    ids: torch.Tensor
    kinds: torch.Tensor
    data: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.ids.shape[0]), int(self.ids.shape[1])

    def rows(self, items: slice | torch.Tensor) -> TargetTable:
        """The targets of images ``items``."""
        return TargetTable(
            self.ids[items], self.kinds[items], None if self.data is None else self.data[items]
        )

    def repeat(self, times: int) -> TargetTable:
        """The table of ``times`` copies of the batch, copy-major (as ``tensor.repeat(times, 1)``)."""
        if times == 1:
            return self
        data = None if self.data is None else self.data.repeat(times, 1, 1)
        return TargetTable(self.ids.repeat(times, 1), self.kinds.repeat(times, 1), data)

    def to(self, device: torch.device | str) -> TargetTable:
        data = None if self.data is None else self.data.to(device)
        return TargetTable(self.ids.to(device), self.kinds.to(device), data)

    @property
    def all_default(self) -> bool:
        """Whether every target is a plain class logit (what graphs exported before target kinds take)."""
        return bool((self.kinds == KIND_CODE["logit"]).all())

    @staticmethod
    def cat(tables: Sequence[TargetTable]) -> TargetTable:
        datas = [t.data for t in tables]
        data = None if any(d is None for d in datas) else torch.cat([d for d in datas if d is not None])
        return TargetTable(torch.cat([t.ids for t in tables]), torch.cat([t.kinds for t in tables]), data)

    @staticmethod
    def of_ids(ids: torch.Tensor, spec: TargetSpec | None = None) -> TargetTable:
        """Plain class ids [N,T] as a table of the output kind's default kind."""
        kind = KIND_CODE[OUTPUT_KINDS[spec.output_kind][0]] if spec is not None else KIND_CODE["logit"]
        length = 0 if spec is None else spec.data_length
        data = (
            None if length == 0 else torch.zeros(*ids.shape, length, dtype=torch.float32, device=ids.device)
        )
        return TargetTable(ids, torch.full_like(ids, kind), data)


def build_table(rows: Sequence[Sequence[int | Target]], spec: TargetSpec, num_images: int) -> TargetTable:
    """The table of N rows of T targets (ints or :class:`Target`), every entry checked; errors name
    the entry (``targets[n][t].mask``) and what the model takes."""
    if len(rows) not in (1, num_images):
        raise InvalidArgumentError(
            "targets", f"has {len(rows)} rows for {num_images} images (give N rows, or 1 row for all)"
        )
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise InvalidArgumentError(
            "targets", f"every image needs the same number of targets, got {sorted(widths)}"
        )
    (width,) = widths
    if width == 0:
        raise InvalidArgumentError("targets", "each image needs at least one target (got T = 0)")
    length = spec.data_length
    ids = torch.empty(len(rows), width, dtype=torch.int64)
    kinds = torch.empty(len(rows), width, dtype=torch.int64)
    data = torch.zeros(len(rows), width, length, dtype=torch.float32) if length else None
    for n, row in enumerate(rows):
        for t, entry in enumerate(row):
            field = f"targets[{n}][{t}]"
            target = entry if isinstance(entry, Target) else _int_target(entry, spec, field)
            code, class_id, values = check_one(target, spec, num_images, field)
            ids[n, t], kinds[n, t] = class_id, code
            if data is not None and values is not None:
                data[n, t] = torch.from_numpy(values)
    table = TargetTable(ids, kinds, data)
    return table if len(rows) == num_images else table.repeat(num_images)


def _int_target(entry: object, spec: TargetSpec, field: str) -> Target:
    if isinstance(entry, bool) or not isinstance(entry, int | np.integer):
        raise InvalidArgumentError(field, f"expected a class id (int) or a Target, got {entry!r}")
    return Target(kind=spec.kinds[0], class_id=int(entry))


def check_one(
    target: Target, spec: TargetSpec, num_images: int, field: str
) -> tuple[int, int, np.ndarray | None]:
    """(kind code, id column, data row [L] or None) of one target; InvalidArgumentError naming
    ``field``.<part> for anything the model's output cannot take."""
    if target.kind not in KIND_CODE:
        raise InvalidArgumentError(
            f"{field}.kind", f"unknown kind {target.kind!r}; known: {', '.join(TARGET_KINDS)}"
        )
    if target.kind not in spec.kinds:
        raise InvalidArgumentError(
            f"{field}.kind",
            f"a model with a {spec.output_kind} output takes targets of kind {', '.join(spec.kinds)}, "
            f"not {target.kind!r}",
        )
    code = KIND_CODE[target.kind]
    if target.kind in IMAGE_KINDS:
        if target.image is None or isinstance(target.image, bool) or not 0 <= int(target.image) < num_images:
            raise InvalidArgumentError(
                f"{field}.image",
                f"expected the index of an image of the batch in [0, {num_images - 1}], got {target.image!r}",
            )
        return code, int(target.image), None
    if spec.output_kind == "embedding":
        return code, 0, _vector(target.vector, int(spec.output_shape[0]), f"{field}.vector")
    class_id = check_target(target.class_id, spec.num_classes, f"{field}.class_id")
    if target.kind == "region":
        if (target.mask is None) == (target.box is None):
            raise InvalidArgumentError(field, "a region target needs exactly one of mask and box")
        h, w = int(spec.output_shape[1]), int(spec.output_shape[2])
        if target.box is not None:
            mask = box_mask(_box(target.box, spec.input_size, f"{field}.box"), spec.input_size, (h, w))
        else:
            assert target.mask is not None
            mask = _mask(target.mask, (h, w), f"{field}.mask")
        return code, class_id, mask.reshape(-1)
    if target.kind == "box":
        return code, class_id, np.asarray(_box(target.box, spec.input_size, f"{field}.box"), dtype=np.float32)
    return code, class_id, None


def _vector(vector: np.ndarray | None, length: int, field: str) -> np.ndarray:
    if vector is None:
        raise InvalidArgumentError(field, f"a dot / cosine target needs a concept vector of {length} values")
    values = np.asarray(vector, dtype=np.float32).reshape(-1) if np.ndim(vector) <= 1 else None
    if values is None or values.shape[0] != length:
        raise InvalidArgumentError(
            field, f"has shape {list(np.shape(vector))}; the model's embedding has {length} dimensions"
        )
    if not np.isfinite(values).all():
        raise InvalidArgumentError(field, "has non-finite values")
    return values


def _mask(mask: np.ndarray, size: tuple[int, int], field: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != size:
        raise InvalidArgumentError(
            field,
            f"is {'x'.join(map(str, array.shape))}; the model's dense output is {size[0]}x{size[1]} "
            "(give the mask on the output's grid)",
        )
    if array.dtype.kind not in "biuf":
        raise InvalidArgumentError(field, f"expected booleans or numbers, got {array.dtype}")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise InvalidArgumentError(field, "has non-finite values")
    return values


def _box(box: object, input_size: tuple[int, int], field: str) -> tuple[float, float, float, float]:
    height, width = input_size
    try:
        x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InvalidArgumentError(field, f"expected four numbers x1, y1, x2, y2, got {box!r}") from None
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise InvalidArgumentError(
            field,
            f"({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not a box inside the {width}x{height} input "
            "(0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height)",
        )
    return x1, y1, x2, y2


def box_mask(
    box: tuple[float, float, float, float], input_size: tuple[int, int], grid: tuple[int, int]
) -> np.ndarray:
    """The [h',w'] mask of the output cells whose centres lie inside ``box`` (input pixels); a box
    smaller than a cell gives the cell holding its centre."""
    height, width = input_size
    h, w = grid
    x1, y1, x2, y2 = box
    cy = (np.arange(h, dtype=np.float64) + 0.5) * height / h
    cx = (np.arange(w, dtype=np.float64) + 0.5) * width / w
    mask = ((cy[:, None] >= y1) & (cy[:, None] < y2) & (cx[None, :] >= x1) & (cx[None, :] < x2)).astype(
        np.float32
    )
    if not mask.any():
        i = min(h - 1, int((y1 + y2) / 2 * h / height))
        j = min(w - 1, int((x1 + x2) / 2 * w / width))
        mask[i, j] = 1.0
    return mask


# -- the maths: traced into the explain and guided graphs ------------------------------------------


def class_scores(output_kind: str, output: torch.Tensor) -> torch.Tensor:
    """Per-image class scores [N,C] (the ``logits`` output; -k targets rank these): the logits;
    the mean logit over pixels (dense); the best anchor's score (detection); the embedding itself."""
    if output_kind == "dense":
        return output.mean(dim=(2, 3))
    if output_kind == "detection":
        return output.amax(dim=1)
    return output


def target_scores(
    output_kind: str,
    output: torch.Tensor,
    ids: torch.Tensor,
    kinds: torch.Tensor,
    data: torch.Tensor | None,
    num_targets: int,
    boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The explained scalar s of every row [M] (M = N·T, row n·T + t is image n's target t).

    output  the explained output of the M rows (the head ran on T copies of each image):
            [M,C] | [M,C,h',w'] | detection scores [M,A,C] | [M,D]
    ids     [M] resolved class ids (image indices for ``*_image``); kinds [M]; data [M,L]
    boxes   detection only: the head's boxes [M,A,4] (input pixels)
    """
    if output_kind == "classification":
        picked = output.gather(1, ids.reshape(-1, 1))[:, 0]
        probability = torch.softmax(output, dim=1).gather(1, ids.reshape(-1, 1))[:, 0]
        return torch.where(
            kinds == KIND_CODE["probability"],
            probability,
            torch.where(kinds == KIND_CODE["sigmoid"], torch.sigmoid(picked), picked),
        )
    if output_kind == "dense":
        m, _, h, w = output.shape
        plane = output.gather(1, ids.reshape(m, 1, 1, 1).expand(m, 1, h, w))[:, 0]
        predicted = (output.detach().argmax(dim=1) == ids.reshape(m, 1, 1)).to(output.dtype)
        assert data is not None
        mask = torch.where(
            (kinds == KIND_CODE["predicted_region"]).reshape(m, 1, 1), predicted, data.reshape(m, h, w)
        )
        return (plane * mask).sum(dim=(1, 2))
    if output_kind == "detection":
        assert data is not None and boxes is not None
        m, a, _ = output.shape
        column = output.gather(2, ids.reshape(m, 1, 1).expand(m, a, 1))[:, :, 0]
        iou = box_iou(boxes.detach(), data.reshape(m, 1, 4))
        matched = (iou >= BOX_MATCH_IOU) | (iou >= iou.amax(dim=1, keepdim=True))
        return (column * matched.to(column.dtype)).sum(dim=1)
    if output_kind == "embedding":
        assert data is not None
        m, d = output.shape
        per_image = output.detach().reshape(-1, num_targets, d)[:, 0]  # [N,D]: each image's own embedding
        other = per_image.index_select(0, ids.reshape(-1).clamp(0, per_image.shape[0] - 1))
        image_kind = (kinds == KIND_CODE["dot_image"]) | (kinds == KIND_CODE["cosine_image"])
        concept = torch.where(image_kind.reshape(m, 1), other, data)
        dot = (output * concept).sum(dim=1)
        cosine = F.cosine_similarity(output, concept, dim=1, eps=1e-8)
        cosine_kind = (kinds == KIND_CODE["cosine"]) | (kinds == KIND_CODE["cosine_image"])
        return torch.where(cosine_kind, cosine, dot)
    raise ValueError(f"unknown output kind {output_kind!r}")


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU [M,A] of boxes [M,A,4] with one box per row [M,1,4] (x1, y1, x2, y2)."""
    x1 = torch.maximum(boxes[..., 0], box[..., 0])
    y1 = torch.maximum(boxes[..., 1], box[..., 1])
    x2 = torch.minimum(boxes[..., 2], box[..., 2])
    y2 = torch.minimum(boxes[..., 3], box[..., 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    area_box = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    return inter / (area + area_box - inter).clamp(min=1e-9)


def as_target(entry: Any) -> int | Target:
    """A JSON-like target (an int, or a dict with Target's fields) as an int or a Target."""
    if isinstance(entry, dict):
        try:
            return Target(**entry)
        except TypeError as exc:
            raise InvalidArgumentError(
                "targets", f"{exc}; fields: kind, class_id, mask, box, vector, image"
            ) from None
    return entry
