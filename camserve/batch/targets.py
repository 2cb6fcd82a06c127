"""A batch job's per-row targets (``--targets-column``): JSON text, one list per row, read into ints
and :class:`Target`s and checked by ``target_kinds.check_one`` (errors name ``targets[t].<field>``).

Each entry is a class id (``3``, ``-1``) or an object with Target's fields::

    [{"kind": "region", "class_id": 3, "mask": "masks/cat.png"},
     {"kind": "region", "class_id": 3, "mask": {"size": [28, 28], "counts": [300, 20, 464]}},
     {"kind": "region", "class_id": 5, "box": [10, 10, 40, 40]},
     {"kind": "probability", "class_id": 2},
     {"kind": "cosine", "vector": "concepts/dog.npy"}]

``mask``: a ``.png`` / ``.npy`` file relative to the dataset (the Parquet file's folder) or COCO's
uncompressed RLE (``camserve.target_masks``); ``vector``: numbers or a ``.npy`` file. ``*_image``
kinds are refused: they name another image of the same request, and a row is one image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camserve.errors import InvalidArgumentError
from camserve.methods.base import check_target_kinds, method_class
from camserve.methods.target_kinds import IMAGE_KINDS, Target, TargetSpec, check_one
from camserve.target_masks import file_mask, rle_mask

FIELDS = ("kind", "class_id", "box", "mask", "vector")


def row_targets(
    text: str | None, root: Path, spec: TargetSpec, field: str = "targets"
) -> tuple[int | Target, ...]:
    """The targets of one row's JSON text; files are read relative to ``root``."""
    if text is None:
        return (-1,)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(field, f"not JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise InvalidArgumentError(field, "expected a non-empty JSON list of class ids or target objects")
    targets: list[int | Target] = []
    for t, entry in enumerate(entries):
        where = f"{field}[{t}]"
        target = (
            _target(entry, root, spec, where) if isinstance(entry, dict) else _class_id(entry, spec, where)
        )
        if isinstance(target, Target):
            check_one(target, spec, 1, where)
        targets.append(target)
    return tuple(targets)


def check_kinds(targets: Sequence[int | Target], methods: Sequence[str], spec: TargetSpec) -> None:
    """Methods that explain class logits only, refused with targets of other kinds."""
    kinds = {t.kind if isinstance(t, Target) else spec.kinds[0] for t in targets}
    check_target_kinds([method_class(m)() for m in methods], kinds, spec.output_kind)


def _class_id(entry: Any, spec: TargetSpec, field: str) -> int:
    if isinstance(entry, bool) or not isinstance(entry, int):
        raise InvalidArgumentError(field, f"expected a class id or an object, got {entry!r}")
    check_one(Target(kind=spec.kinds[0], class_id=entry), spec, 1, field)
    return entry


def _target(entry: dict[str, Any], root: Path, spec: TargetSpec, field: str) -> Target:
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise InvalidArgumentError(f"{field}.{unknown[0]}", f"unknown field (fields: {', '.join(FIELDS)})")
    kind = entry.get("kind", spec.kinds[0])
    if kind in IMAGE_KINDS:
        raise InvalidArgumentError(
            f"{field}.kind", f"{kind} names another image of a request; a batch row is one image"
        )
    grid = (int(spec.output_shape[1]), int(spec.output_shape[2])) if spec.output_kind == "dense" else None
    mask = entry.get("mask")
    if isinstance(mask, str):
        mask = file_mask(root / mask, f"{field}.mask", grid)
    elif isinstance(mask, dict):
        size, counts = mask.get("size"), mask.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, list)):
            raise InvalidArgumentError(
                f"{field}.mask", 'expected {"size": [h, w], "counts": [...]} (COCO RLE)'
            )
        mask = rle_mask(int(size[0]), int(size[1]), counts, f"{field}.mask", grid)
    elif mask is not None:
        raise InvalidArgumentError(f"{field}.mask", "expected a .png / .npy path or COCO RLE")
    vector = entry.get("vector")
    if isinstance(vector, str):
        try:
            vector = np.load(root / vector, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{field}.vector", f"{root / vector}: {exc}") from None
    elif isinstance(vector, list):
        try:
            vector = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{field}.vector", "expected numbers or a .npy path") from None
    elif vector is not None:
        raise InvalidArgumentError(f"{field}.vector", "expected numbers or a .npy path")
    box = entry.get("box")
    if box is not None and not isinstance(box, list):
        raise InvalidArgumentError(f"{field}.box", f"expected [x1, y1, x2, y2], got {box!r}")
    class_id = entry.get("class_id", -1)
    if isinstance(class_id, bool) or not isinstance(class_id, int):
        raise InvalidArgumentError(f"{field}.class_id", f"expected an integer, got {class_id!r}")
    return Target(
        kind=str(kind),
        class_id=class_id,
        mask=mask,
        box=None if box is None else tuple(box),
        vector=vector,
    )
