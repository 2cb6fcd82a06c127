"""Targets: what to explain, for every image.

A plain target is an int: ``c >= 0`` is class c; ``-k`` (k >= 1) is the k-th highest-scoring class
of that image (``-1`` the prediction), explained as the default kind of the model's output (a
classifier's logit). Each image gets T targets, so targets form an [N,T] table:

* ``None``               -> ``[[-1]]`` for every image (explain the prediction);
* an int ``t``           -> ``[[t]]`` for every image;
* ``[N,T]`` (nested list, numpy array or tensor of ints) -> row n for image n;
* ``[1,T]``              -> the same T targets for every image.

Rows may also hold :class:`~camserve.methods.target_kinds.Target` objects (or dicts of their
fields) beside ints, for the other target kinds (probabilities, regions, boxes, embedding
similarities: ``camserve.methods.target_kinds``); one ``Target`` alone stands for ``[[target]]``.
:func:`parse_target_table` turns any of these into the :class:`TargetTable` the graphs take.

A flat list is refused as ambiguous (one target per image, or T targets for all?): write
``[[3], [5]]`` for the former and ``[[3, 5]]`` for the latter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from camserve.config import check_target
from camserve.errors import InvalidArgumentError
from camserve.methods.target_kinds import (
    IMAGE_KINDS,
    KIND_CODE,
    Target,
    TargetSpec,
    TargetTable,
    as_target,
    build_table,
)

TargetsLike = (
    None
    | int
    | Target
    | Sequence[Sequence[int | Target | dict[str, Any]]]
    | np.ndarray
    | torch.Tensor
    | TargetTable
)


def parse_targets(targets: Any, num_images: int, num_classes: int) -> torch.Tensor:
    """The [N,T] int64 table ``targets`` stands for; InvalidArgumentError("targets", ...) if it is
    not one of the forms in this module's docstring or names a class outside [-C, C)."""
    if targets is None:
        table = torch.full((1, 1), -1, dtype=torch.int64)
    elif isinstance(targets, bool):
        raise InvalidArgumentError("targets", f"expected class ids (ints), got {targets!r}")
    elif isinstance(targets, int | np.integer):
        table = torch.full((1, 1), int(targets), dtype=torch.int64)
    else:
        table = _as_int_table(targets)
    if table.ndim != 2:
        raise InvalidArgumentError(
            "targets",
            f"expected an [N,T] or [1,T] table of class ids, got {table.ndim}-D shape {list(table.shape)} "
            "(for one target per image write [[3], [5]]; for the same targets for all images [[3, 5]])",
        )
    if table.shape[1] == 0:
        raise InvalidArgumentError("targets", "each image needs at least one target (got T = 0)")
    if table.shape[0] not in (1, num_images):
        raise InvalidArgumentError(
            "targets", f"has {table.shape[0]} rows for {num_images} images (give N rows, or 1 row for all)"
        )
    bad = (table >= num_classes) | (table < -num_classes)
    if bool(bad.any()):
        check_target(int(table[bad][0]), num_classes, "targets")  # the one rule (camserve.config)
    return table.expand(num_images, table.shape[1]).contiguous()


def _as_int_table(targets: Any) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        table = targets.detach().cpu()
    elif isinstance(targets, np.ndarray):
        table = torch.from_numpy(np.ascontiguousarray(targets))
    elif isinstance(targets, list | tuple):
        try:
            table = torch.tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(
                "targets", "expected a rectangular nested list of ints, e.g. [[-1]] or [[3, 5], [1, 2]]"
            ) from None
    else:
        raise InvalidArgumentError(
            "targets",
            f"expected None, an int, a nested list, an array or a tensor, got {type(targets).__name__}",
        )
    integer = table.dtype != torch.bool and not (table.dtype.is_floating_point or table.dtype.is_complex)
    if not integer and table.numel() > 0:  # torch.tensor([[]]) is float: let the T = 0 check name it
        raise InvalidArgumentError("targets", f"expected integer class ids, got {table.dtype}")
    return table.to(torch.int64)


def resolve_targets(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Negative targets -k replaced by the k-th highest-scoring class (torch.topk order); non-negative
    targets unchanged. targets [N,T], logits [N,C]. The one rule: the explain graph is traced from it
    too (``camserve.export.graphs``), so it has no data-dependent shape (ONNX TopK over all C)."""
    order = torch.topk(logits, logits.shape[1], dim=1).indices.to(targets.device)
    rank = (-targets - 1).clamp(min=0, max=logits.shape[1] - 1)
    return torch.where(targets >= 0, targets, torch.gather(order, 1, rank))


def parse_target_table(targets: Any, num_images: int, spec: TargetSpec) -> TargetTable:
    """The [N,T] :class:`TargetTable` ``targets`` stands for (the forms in this module's docstring;
    a TargetTable is taken as it is). Int forms are checked by :func:`parse_targets`; rows with
    ``Target`` entries (or dicts) go through ``build_table``, the one validator of targets."""
    if isinstance(targets, TargetTable):
        if targets.shape[0] != num_images:
            raise InvalidArgumentError("targets", f"has {targets.shape[0]} rows for {num_images} images")
        return targets
    if isinstance(targets, Target | dict):
        targets = [[targets]]
    if isinstance(targets, list | tuple) and any(
        isinstance(entry, Target | dict) for row in targets if isinstance(row, list | tuple) for entry in row
    ):
        return build_table([[as_target(entry) for entry in row] for row in targets], spec, num_images)
    if isinstance(targets, list | tuple) and any(isinstance(row, Target | dict) for row in targets):
        raise InvalidArgumentError(
            "targets", "expected rows of targets, e.g. [[Target(...)]] (one row for every image) or N rows"
        )
    ids = parse_targets(targets, num_images, spec.num_classes)
    if spec.data_length and spec.output_kind != "dense":
        # the default kind needs data (a box, a concept vector): build_table names what is missing
        return build_table(ids.tolist(), spec, num_images)
    return TargetTable.of_ids(ids, spec)


def classification_spec(num_classes: int, input_size: Sequence[int]) -> TargetSpec:
    """The TargetSpec of a classifier with ``num_classes`` classes and input [..., H, W]."""
    return TargetSpec(
        "classification", num_classes, (num_classes,), (int(input_size[-2]), int(input_size[-1]))
    )


def image_targets_as_vectors(table: TargetTable, embeddings: torch.Tensor) -> TargetTable:
    """``dot_image`` / ``cosine_image`` targets as ``dot`` / ``cosine`` to image j's embedding
    (``embeddings`` [N,D], the batch's class scores): the same scalars, but a target no longer
    depends on which rows share its graph run (chunks, noisy and augmented copies). The ids keep
    the image indices."""
    image = torch.zeros_like(table.kinds, dtype=torch.bool)
    for kind in IMAGE_KINDS:
        image |= table.kinds == KIND_CODE[kind]
    if not bool(image.any()):
        return table
    assert table.data is not None
    vectors = embeddings.to(table.data.device, table.data.dtype)[table.ids.clamp(0, embeddings.shape[0] - 1)]
    kinds = table.kinds.clone()
    kinds[table.kinds == KIND_CODE["dot_image"]] = KIND_CODE["dot"]
    kinds[table.kinds == KIND_CODE["cosine_image"]] = KIND_CODE["cosine"]
    return TargetTable(table.ids, kinds, torch.where(image.unsqueeze(-1), vectors, table.data))
