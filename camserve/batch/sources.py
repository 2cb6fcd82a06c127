"""Where a batch job's images come from: a folder, a text list of paths, or a Parquet table.

Every image is an :class:`ImageRecord` with a stable id (the id column, else the path relative to
the folder, else the line as written). Records are streamed in a fixed order (sorted paths for a
folder, file order otherwise); the images themselves are only read when a worker decodes them.
A file name (or list line) that is not valid UTF-8 still becomes an id: :func:`text_id` escapes the
bytes that do not decode as ``%XX``, and its ``path`` is the name as the file system has it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from camserve.errors import InvalidArgumentError, NotFoundError

NPY_SUFFIX = ".npy"
PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_READ_ROWS = 4096  # rows of id/path columns read at a time while listing a table


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``id`` is stable across runs; ``path`` is a file (folder / list / path column) or
    None; ``row`` is the row of a Parquet bytes column (None otherwise); ``targets`` the row's
    targets column (JSON text, ``camserve.batch.targets``) or None."""

    id: str
    path: str | None = None
    row: int | None = None
    targets: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """What ``--input`` and its column flags name; picklable, so Ray actors rebuild the source."""

    input: str
    id_column: str = "id"
    path_column: str | None = None
    bytes_column: str | None = None
    targets_column: str | None = None  # JSON text per row: its targets (camserve.batch.targets)


class ImageSource:
    """Lists the records of one input and fetches the bytes of Parquet-stored images."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.root = Path(spec.input)
        if not self.root.exists():
            raise NotFoundError(f"input: no such file or directory: {self.root}")
        self.kind = _kind(self.root)
        if self.kind != "parquet" and (spec.path_column or spec.bytes_column or spec.targets_column):
            raise InvalidArgumentError(
                "--path-column/--bytes-column/--targets-column", "apply only to a Parquet --input"
            )
        if self.kind == "parquet":
            self._check_columns()

    def records(self) -> Iterator[ImageRecord]:
        if self.kind == "folder":
            yield from self._folder_records()
        elif self.kind == "list":
            yield from self._list_records()
        else:
            yield from self._parquet_records()

    def read_bytes(self, rows: Sequence[int]) -> list[bytes | None]:
        """The bytes column at ``rows`` (a Parquet bytes source), reading only their row groups."""
        import pyarrow.parquet as pq

        assert self.spec.bytes_column is not None
        parquet = pq.ParquetFile(self.root)
        starts = [0]
        for group in range(parquet.num_row_groups):
            starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
        by_group: dict[int, list[int]] = {}
        for row in rows:
            group = _group_of(starts, row)
            by_group.setdefault(group, []).append(row)
        found: dict[int, bytes | None] = {}
        for group, group_rows in by_group.items():
            column = parquet.read_row_group(group, columns=[self.spec.bytes_column]).column(0)
            for row in group_rows:
                found[row] = column[row - starts[group]].as_py()
        return [found[row] for row in rows]

    # -- the three kinds ----------------------------------------------------------------------

    def _folder_records(self) -> Iterator[ImageRecord]:
        for path in _walk_sorted(self.root):
            yield ImageRecord(id=text_id(path.relative_to(self.root).as_posix()), path=str(path))

    def _list_records(self) -> Iterator[ImageRecord]:
        base = self.root.parent
        with open(self.root, encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                name = line.strip()
                if not name or name.startswith("#"):
                    continue
                path = Path(name) if Path(name).is_absolute() else base / name
                yield ImageRecord(id=text_id(name), path=str(path))

    def _parquet_records(self) -> Iterator[ImageRecord]:
        import pyarrow.parquet as pq

        spec = self.spec
        columns = [spec.id_column] + ([spec.path_column] if spec.path_column else [])
        columns += [spec.targets_column] if spec.targets_column else []
        row = 0
        for batch in pq.ParquetFile(self.root).iter_batches(batch_size=_PARQUET_READ_ROWS, columns=columns):
            ids = batch.column(0).to_pylist()
            paths = batch.column(1).to_pylist() if spec.path_column else [None] * len(ids)
            texts = batch.column(len(columns) - 1).to_pylist() if spec.targets_column else [None] * len(ids)
            for image_id, path, text in zip(ids, paths, texts, strict=True):
                if image_id is None:
                    raise InvalidArgumentError(spec.id_column, f"{self.root}: row {row} has a null id")
                if spec.path_column:
                    resolved = None if path is None else _relative_to(self.root.parent, str(path))
                    yield ImageRecord(id=str(image_id), path=resolved, targets=text)
                else:
                    yield ImageRecord(id=str(image_id), row=row, targets=text)
                row += 1

    def _check_columns(self) -> None:
        import pyarrow.parquet as pq

        spec = self.spec
        if (spec.path_column is None) == (spec.bytes_column is None):
            raise InvalidArgumentError(
                "--path-column/--bytes-column", "a Parquet --input needs exactly one of them"
            )
        try:
            names = pq.read_schema(self.root).names
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise InvalidArgumentError(
                "input", f"{self.root} is not a readable Parquet file ({exc})"
            ) from None
        for flag, column in (
            ("--id-column", spec.id_column),
            ("--path-column", spec.path_column),
            ("--bytes-column", spec.bytes_column),
            ("--targets-column", spec.targets_column),
        ):
            if column is not None and column not in names:
                raise InvalidArgumentError(
                    flag, f"{self.root} has no column {column!r} (has {', '.join(names)})"
                )


def text_id(name: str) -> str:
    """``name`` as it is when it is valid UTF-8; else its undecodable bytes (surrogate escapes, as
    os.walk and ``errors="surrogateescape"`` give them) as ``%XX``, and ``%`` itself as ``%25``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        text = raw.decode("utf-8", "surrogateescape").replace("%", "%25")
        return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def printable(text: str | None) -> str | None:
    """Text for the Parquet tables (paths, messages naming them): escaped as :func:`text_id` does."""
    return None if text is None else text_id(text)


def _kind(root: Path) -> str:
    if root.is_dir():
        return "folder"
    if root.suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    return "list"


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (recursively, hidden files and folders skipped), in sorted order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _relative_to(base: Path, path: str) -> str:
    return path if Path(path).is_absolute() else str(base / path)


def _group_of(starts: list[int], row: int) -> int:
    import bisect

    return bisect.bisect_right(starts, row) - 1
