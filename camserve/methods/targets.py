"""Targets: which classes to explain, for every image.

A target is an int: ``c >= 0`` is class c; ``-k`` (k >= 1) is the k-th highest-scoring class of
that image (``-1`` the prediction). Each image gets T targets, so targets form an [N,T] table:

* ``None``               -> ``[[-1]]`` for every image (explain the prediction);
* an int ``t``           -> ``[[t]]`` for every image;
* ``[N,T]`` (nested list, numpy array or tensor of ints) -> row n for image n;
* ``[1,T]``              -> the same T targets for every image.

A flat list is refused as ambiguous (one target per image, or T targets for all?): write
``[[3], [5]]`` for the former and ``[[3, 5]]`` for the latter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from camserve.config import check_target
from camserve.errors import InvalidArgumentError

TargetsLike = None | int | list[list[int]] | np.ndarray | torch.Tensor


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
