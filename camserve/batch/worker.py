"""The per-batch function both engines run: decode shards' images in a thread pool ahead of the
graph, explain them ``batch_size`` at a time with one Explainer, write each shard's rows and errors.

The local engine streams every shard through one :class:`ShardWorker`; the Ray engine holds one
per actor and hands it one shard at a time. Neither knows what a CAM is: the Explainer does.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camserve.batch.encoding import computed_size, encode_maps, png_maps, resize_stored
from camserve.batch.job import JobConfig, ShardTask
from camserve.batch.outdir import OutputDir, map_column, png_column
from camserve.batch.sources import NPY_SUFFIX, ImageRecord, ImageSource, printable
from camserve.batch.targets import check_kinds, row_targets
from camserve.encoded_images import DecodeBudget, check_image, decode_checked
from camserve.errors import InvalidArgumentError
from camserve.methods.target_kinds import KIND_CODE


@dataclass(frozen=True)
class ShardSummary:
    name: str
    rows: int
    errors: int


@dataclass
class _Decoded:
    record: ImageRecord
    tensor: Any = None  # torch.Tensor [1,3,H,W]
    error: str | None = None
    targets: tuple[Any, ...] | None = None  # the row's targets (--targets-column): ints and Targets


class ShardWorker:
    """One Explainer, one decode pool, one output directory."""

    def __init__(self, job: JobConfig, explainer: Any | None = None) -> None:
        import torch

        from camserve.explainer import Explainer

        self.job = job
        # Torch ops here (resizing in the decode threads, the CAM maths) are small and run
        # concurrently: intra-op threads on top of that oversubscribe the cores (6x slower measured
        # on a loaded 2-core machine). ONNX Runtime keeps its own threads for the graph.
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.explainer = explainer if explainer is not None else Explainer(job.model, config=job.config)
            self.source = ImageSource(job.source)
            self.out = OutputDir(job.out)
        except BaseException:
            torch.set_num_threads(self._torch_threads)  # no close() follows a failed start
            raise
        self.pool = ThreadPoolExecutor(job.decode_workers, thread_name_prefix="camserve-decode")
        # decode threads together hold at most one largest image (about 20 B per pixel) at a time
        self.budget = DecodeBudget(job.max_image_pixels, "--max-image-pixels")
        groups: dict[str, list[str]] = {}
        for method in job.methods:
            groups.setdefault(computed_size(method, job.encoding), []).append(method)
        self.groups = groups  # output size -> methods computed at it (one explain run per size)
        self.schema = rows_schema(job.methods, job.encoding.png)
        self.spec = self.explainer.manifest.target_spec()
        self.dataset = Path(job.source.input).parent  # where a targets column's files are

    def close(self) -> None:
        import torch

        self.pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._torch_threads)

    def run(self, tasks: Iterable[ShardTask]) -> Iterator[ShardSummary]:
        """Explain and write every shard of ``tasks``, yielding a summary as each lands on disk.
        Decoding runs up to two batches ahead of the graph, across shard boundaries; only the
        encoded rows of the current shard are held."""
        rows: list[dict[str, Any]] = []
        errors: list[_Decoded] = []
        batch: list[_Decoded] = []
        for task, item, last in self._decode_stream(tasks):
            if item.error is not None:
                errors.append(item)
            else:
                batch.append(item)
            if batch and (len(batch) == self.job.batch_size or last):
                rows.extend(self.explain(batch))
                batch = []
            if last:
                self.out.write_shard(task.name, self._rows_table(rows), _errors_table(errors))
                yield ShardSummary(task.name, len(rows), len(errors))
                rows, errors = [], []

    def explain(self, items: list[_Decoded]) -> list[dict[str, Any]]:
        """Rows for decoded images: predictions, resolved targets and encoded maps per method.
        With a targets column, images with the same number of targets run together."""
        if self.job.source.targets_column is None:
            return self._explain(items, None if self.job.targets is None else [list(self.job.targets)])
        by_count: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            by_count.setdefault(len(item.targets or ()), []).append(n)
        rows: dict[int, dict[str, Any]] = {}
        for indices in by_count.values():
            group = [items[n] for n in indices]
            done = self._explain(group, [list(item.targets or ()) for item in group])
            rows.update(zip(indices, done, strict=True))
        return [rows[n] for n in range(len(items))]

    def _explain(self, items: list[_Decoded], targets: list[list[Any]] | None) -> list[dict[str, Any]]:
        import torch

        job = self.job
        batch = torch.cat([item.tensor for item in items])
        maps: dict[str, np.ndarray] = {}
        result = None
        for size, methods in self.groups.items():
            options = dataclasses.replace(job.config.explain, output_size=size)
            result = self.explainer.explain(batch, methods=methods, targets=targets, options=options)
            maps.update(result.maps)
        assert result is not None and result.target_kinds is not None and result.target_scores is not None
        columns: dict[str, list[Any]] = {
            "id": [item.record.id for item in items],
            "path": [printable(item.record.path) for item in items],
            "top_ids": [[p.class_id for p in row] for row in result.predictions],
            "top_probs": [[p.probability for p in row] for row in result.predictions],
            "target_ids": result.target_ids.tolist(),
            "target_kinds": [[KIND_CODE[str(kind)] for kind in row] for row in result.target_kinds],
            "target_scores": result.target_scores.tolist(),
        }
        options = job.config.explain
        input_hw = tuple(int(v) for v in batch.shape[-2:])
        for method in job.methods:
            columns[map_column(method)] = encode_maps(maps[method], job.encoding.dtype)
            if job.encoding.png:
                full = resize_stored(maps[method], input_hw, options.normalize, options.eps)  # type: ignore[arg-type]
                columns[png_column(method)] = png_maps(full)
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    # -- decoding -------------------------------------------------------------------------------

    def _decode_stream(self, tasks: Iterable[ShardTask]) -> Iterator[tuple[ShardTask, _Decoded, bool]]:
        """(task, decoded image, whether it is the task's last) in order, with a bounded number of
        images decoding ahead in the pool."""
        window = 2 * self.job.batch_size + self.job.decode_workers
        submissions = self._submissions(tasks)
        pending: deque[tuple[ShardTask, bool, Future[_Decoded]]] = deque(
            itertools.islice(submissions, window)
        )
        while pending:
            task, last, future = pending.popleft()
            pending.extend(itertools.islice(submissions, 1))
            yield task, future.result(), last

    def _submissions(self, tasks: Iterable[ShardTask]) -> Iterator[tuple[ShardTask, bool, Future[_Decoded]]]:
        for task in tasks:
            data = self._bytes(task)
            for position, record in enumerate(task.records):
                last = position == len(task.records) - 1
                yield task, last, self.pool.submit(self._decode, record, data[position])

    def _bytes(self, task: ShardTask) -> list[bytes | None]:
        rows = [record.row for record in task.records]
        if self.job.source.bytes_column is None:
            return [None] * len(rows)
        return self.source.read_bytes([row for row in rows if row is not None])

    def _decode(self, record: ImageRecord, data: bytes | None) -> _Decoded:
        """One image -> [1,3,H,W]; any failure becomes the record's error message (the job goes on).
        Encoded images pass the service's checks (``camserve.encoded_images``) with the job's pixel
        limit before anything is decoded; a ``.npy`` file is a preprocessed tensor."""
        try:
            targets = None
            if self.job.source.targets_column is not None:
                targets = row_targets(record.targets, self.dataset, self.spec, self.job.source.targets_column)
                check_kinds(targets, self.job.methods, self.spec)
            if data is None and record.path is None:
                return _Decoded(record, error="no image: the path is null")
            item: Any = record.path
            if data is None and not str(record.path).lower().endswith(NPY_SUFFIX):
                data = read_image_file(str(record.path), self.job.max_image_file_bytes)
            if data is None:
                tensor = self.explainer.preprocess(item)  # a .npy tensor: nothing to decode
            else:
                where = str(record.path or f"row {record.row}")
                header = check_image(data, where, self.job.max_image_pixels)
                channels = self.explainer.input_size[0]
                with self.budget.hold(header.cost, where):  # the decode and the resize
                    tensor = self.explainer.preprocess(decode_checked(header, where, channels=channels))
        except Exception as exc:  # noqa: BLE001  a bad image must not stop the job
            message = str(exc) if str(exc) else type(exc).__name__
            return _Decoded(record, error=message)
        if tensor.shape[0] != 1:
            return _Decoded(record, error=f"holds {tensor.shape[0]} images; give one image per file")
        return _Decoded(record, tensor=tensor, targets=targets)

    def _rows_table(self, rows: list[dict[str, Any]]) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist(rows, schema=self.schema)


def read_image_file(path: str, max_bytes: int) -> bytes:
    """A file's bytes, refused unread when it is larger than ``max_bytes``."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        data = file.read(max_bytes + 1) if size <= max_bytes else b""
        if size > max_bytes or len(data) > max_bytes:
            raise InvalidArgumentError(path, f"the file is over {max_bytes} bytes (the most read)")
        return data


def rows_schema(methods: Iterable[str], png: bool) -> Any:
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("top_ids", pa.list_(pa.int32())),
        pa.field("top_probs", pa.list_(pa.float32())),
        pa.field("target_ids", pa.list_(pa.int64())),
        pa.field("target_kinds", pa.list_(pa.int8())),
        pa.field("target_scores", pa.list_(pa.float32())),
    ]
    for method in methods:
        fields.append(pa.field(map_column(method), pa.binary()))
        if png:
            fields.append(pa.field(png_column(method), pa.list_(pa.binary())))
    return pa.schema(fields)


def errors_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("message", pa.string()),
        ]
    )


def _errors_table(errors: list[_Decoded]) -> Any:
    import pyarrow as pa

    rows = [
        {"id": e.record.id, "path": printable(e.record.path), "message": printable(e.error)} for e in errors
    ]
    return pa.Table.from_pylist(rows, schema=errors_schema())
