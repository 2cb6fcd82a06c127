"""Reading a batch job's output back: maps as ``Explainer`` gives them, the rows, the errors.

>>> from camserve.batch import read_maps
>>> maps = read_maps("out/", ids=["cats/1.png"], method="gradcam")   # [1,T,H,W] float32
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camserve.batch.encoding import MAP_DTYPES, decode_maps, resize_stored
from camserve.batch.outdir import OutputDir
from camserve.config import resolve_output_size
from camserve.errors import InvalidArgumentError, NotFoundError

Size = str | tuple[int, int]


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    manifest = OutputDir(out).read_manifest()
    if manifest is None:
        raise NotFoundError(f"{out}: no manifest.json (not a `camserve batch` output)")
    return manifest


def read_rows(out: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Any:
    """Every row of OUT's shards as one pyarrow Table (shard order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = OutputDir(out).shard_files()
    tables = [pq.read_table(path, columns=list(columns) if columns else None) for path in files]
    if not tables:
        from camserve.batch.worker import rows_schema

        manifest = read_manifest(out)
        schema = rows_schema(manifest["job"]["methods"], manifest["job"]["encoding"]["png"])
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    return pa.concat_tables(tables)


def read_errors(out: str | os.PathLike[str]) -> Any:
    """The errors table (id, path, message) as one pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from camserve.batch.worker import errors_schema

    tables = [pq.read_table(path) for path in OutputDir(out).error_files()]
    return pa.concat_tables(tables) if tables else errors_schema().empty_table()


def read_maps(
    out: str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    method: str | None = None,
    size: Size = "input",
) -> np.ndarray:
    """float32 maps [N,T,H,W] of ``method`` for ``ids`` (in that order; None: every row, in shard
    order), resized and normalised exactly as ``Explainer`` does for ``output_size=size``.

    size  "input" (the model's input size), "feature", "stored" (as stored, no resizing), "HxW" or
          (H, W). Maps stored at the feature resolution (the default) give every size exactly;
          maps stored at another size only that size.
    """
    manifest = read_manifest(out)
    methods = list(manifest["maps"])
    method = method if method is not None else methods[0]
    if method not in manifest["maps"]:
        raise InvalidArgumentError(
            "method", f"{Path(out)} has no maps of {method!r} (has {', '.join(methods)})"
        )
    entry = manifest["maps"][method]
    rows = read_rows(out, ["id", entry["column"]])
    blobs = rows.column(entry["column"]).to_pylist()
    if ids is not None:
        position = {image_id: index for index, image_id in enumerate(rows.column("id").to_pylist())}
        missing = [image_id for image_id in ids if image_id not in position]
        if missing:
            raise NotFoundError(
                f"{Path(out)}: no maps for ids {missing[:5]}" + (" ..." if len(missing) > 5 else "")
            )
        blobs = [blobs[position[image_id]] for image_id in ids]
    count, height, width = (int(side) for side in entry["shape"])
    if count < 0:  # a targets column: each row has its own T
        count = _row_targets(blobs, entry["dtype"], height * width, out)
    shape = (count, height, width)
    stored = decode_maps(blobs, entry["dtype"], shape)
    target = _output_size(size, manifest, (height, width))
    exact = entry["exact_sizes"]
    if exact != "any" and list(target) not in exact:
        raise InvalidArgumentError(
            "size",
            f"{method!r} is stored at {shape[1]}x{shape[2]} (--map-size {entry['computed_at']}); "
            f"only that size reproduces Explainer's maps, not {target[0]}x{target[1]}",
        )
    return resize_stored(stored, target, manifest["normalized"], manifest["eps"])


def _row_targets(blobs: list[bytes], dtype: str, pixels: int, out: str | os.PathLike[str]) -> int:
    """The T of rows stored with a targets column; rows of different T are read apart (by ``ids``)."""
    sizes = {len(blob) for blob in blobs}
    if len(sizes) > 1:
        raise InvalidArgumentError(
            "ids", f"{Path(out)}: these rows have different numbers of targets; read rows of one T at a time"
        )
    return (sizes.pop() if sizes else 0) // (pixels * np.dtype(MAP_DTYPES[dtype]).itemsize)


def _output_size(size: Size, manifest: dict[str, Any], stored: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple):
        return resolve_output_size(f"{size[0]}x{size[1]}", (1, 1), (1, 1), "size")
    if size == "stored":
        return stored
    input_h, input_w = manifest["input_size"]
    feature_h, feature_w = manifest["feature_size"]
    return resolve_output_size(size, (input_h, input_w), (feature_h, feature_w), "size")
