"""A batch job's definition (picklable, so Ray actors rebuild it), its manifest, and its plan: the
pending images cut into shards with deterministic names."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.batch.encoding import RESIZE_RULE, MapEncoding, computed_size
from camserve.batch.outdir import OutputDir, map_column, png_column, shard_name
from camserve.batch.sources import ImageRecord, ImageSource, SourceSpec
from camserve.batch.targets import check_kinds
from camserve.config import CamserveConfig, resolve_output_size
from camserve.defaults import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS
from camserve.errors import InvalidArgumentError
from camserve.methods.target_kinds import Target, build_table

FORMAT = "camserve-batch/1"
# ExplainOptions fields that do not change stored maps (output_size is replaced by the encoding).
_NOT_JOB_OPTIONS = ("output_size",)


@dataclass(frozen=True)
class JobConfig:
    """Everything a worker needs to explain and write shards; the same object on every engine."""

    model: str | None  # model directory; None: the embedded default model
    out: str
    source: SourceSpec
    methods: tuple[str, ...]
    targets: tuple[int | Target, ...] | None  # the same targets for every image; None: each image's top class
    config: CamserveConfig
    encoding: MapEncoding = MapEncoding()
    batch_size: int = 32  # images per explain-graph run
    shard_size: int = 1024  # images per Parquet shard (and per Ray task)
    decode_workers: int = 2  # threads decoding and preprocessing ahead of the graph
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are error rows, never decoded
    max_image_file_bytes: int = MAX_IMAGE_FILE_BYTES  # larger files are error rows, never read

    def check(self) -> None:
        for name, value in (("--batch-size", self.batch_size), ("--shard-size", self.shard_size)):
            if value < 1:
                raise InvalidArgumentError(name, f"must be >= 1, got {value}")
        if self.max_image_pixels < 1:
            raise InvalidArgumentError("--max-image-pixels", f"must be >= 1, got {self.max_image_pixels}")
        if self.decode_workers < 1:
            raise InvalidArgumentError("--decode-workers", f"must be >= 1, got {self.decode_workers}")
        self.encoding.check(self.config.explain.normalize)
        if self.targets is not None and self.source.targets_column is not None:
            raise InvalidArgumentError("--targets-column", "give either --target or --targets-column")

    def with_runtime(self, **changes: Any) -> JobConfig:
        runtime = dataclasses.replace(self.config.runtime, **changes)
        return dataclasses.replace(self, config=dataclasses.replace(self.config, runtime=runtime))


@dataclass(frozen=True)
class ShardTask:
    """One shard's images: what a worker turns into ``OUT/<name>`` (and its errors file)."""

    name: str
    records: tuple[ImageRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "records": [dataclasses.astuple(r) for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardTask:
        return cls(data["name"], tuple(ImageRecord(*fields) for fields in data["records"]))


def target_identity(target: int | Target) -> Any:
    """A target as JSON for the job's identity (arrays by their SHA-256)."""
    if not isinstance(target, Target):
        return int(target)
    identity: dict[str, Any] = {"kind": target.kind, "class_id": int(target.class_id)}
    if target.box is not None:
        identity["box"] = [float(v) for v in target.box]
    if target.image is not None:
        identity["image"] = int(target.image)
    for name, array in (("mask", target.mask), ("vector", target.vector)):
        if array is not None:
            data = np.ascontiguousarray(array, dtype=np.float32)
            identity[name] = {"shape": list(data.shape), "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    return identity


def check_targets(job: JobConfig, explainer: Any) -> None:
    """``--target`` checked against the model before any image is explained."""
    if job.targets is None:
        return
    spec = explainer.manifest.target_spec()
    try:
        build_table([list(job.targets)], spec, 1)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError("--target", str(exc)) from None
    check_kinds(job.targets, job.methods, spec)


def job_identity(job: JobConfig, explainer: Any) -> dict[str, Any]:
    """What must not change between runs into one OUT: model, methods, targets, options, encoding."""
    manifest = explainer.manifest
    files = {entry.file: entry.sha256 for entry in manifest.graphs.values()}
    if manifest.cam_weights is not None:
        files[manifest.cam_weights.file] = manifest.cam_weights.sha256
    options = {k: v for k, v in dataclasses.asdict(job.config.explain).items() if k not in _NOT_JOB_OPTIONS}
    return {
        "model": {"name": manifest.name, "files": dict(sorted(files.items()))},
        "methods": list(job.methods),
        "targets": None if job.targets is None else [target_identity(t) for t in job.targets],
        "targets_column": job.source.targets_column,
        "options": options,
        "encoding": job.encoding.as_dict(),
    }


def manifest(job: JobConfig, explainer: Any, counts: dict[str, int] | None) -> dict[str, Any]:
    """``OUT/manifest.json``: the job's identity, the map encoding, the columns and the counts."""
    from camserve import __version__

    _, height, width = explainer.input_size
    feature_hw = tuple(int(v) for v in explainer.manifest.activation_shape[1:])
    # with a targets column each row has its own T (its target_ids' length): -1
    num_targets = -1 if job.source.targets_column else 1 if job.targets is None else len(job.targets)
    maps = {}
    for method in job.methods:
        size = computed_size(method, job.encoding)
        stored = resolve_output_size(size, (height, width), feature_hw)  # type: ignore[arg-type]
        maps[method] = {
            "column": map_column(method),
            "png_column": png_column(method) if job.encoding.png else None,
            "dtype": job.encoding.dtype,
            "byte_order": "little",
            "shape": [num_targets, *stored],
            "computed_at": size,
            # From feature-resolution maps the rule gives Explainer's maps at every size; otherwise
            # only at the stored size.
            "exact_sizes": "any" if size == "feature" else [list(stored)],
        }
    return {
        "format": FORMAT,
        "camserve_version": __version__,
        "job": job_identity(job, explainer),
        "input_size": [height, width],
        "feature_size": list(feature_hw),
        "class_names": explainer.class_names,
        "maps": maps,
        "resize_rule": RESIZE_RULE,
        "normalized": job.config.explain.normalize,
        "eps": job.config.explain.eps,
        "columns": {
            "id": "string: stable id (id column, else path relative to the input folder, else the line)",
            "path": "string: the image file (null for a Parquet bytes column)",
            "top_ids": "list<int32>: top-k predicted class ids, best first",
            "top_probs": "list<float32>: their softmax probabilities",
            "target_ids": "list<int64>: the classes explained (negative targets resolved), T per row",
            "target_kinds": "list<int8>: each target's kind code (camserve.methods.target_kinds)",
            "target_scores": "list<float32>: the explained scalars (a logit, a probability...)",
            "map_<method>": "binary: T x h x w maps in `dtype`, C order (see maps.<method>.shape)",
            "png_<method>": "list<binary>: one 8-bit PNG per target at the input size (--png)",
        },
        "errors": "errors/part-*.parquet: id, path, message of images that could not be explained",
        "counts": counts,
    }


def plan_shards(source: ImageSource, out: OutputDir, shard_size: int, done: set[str]) -> Iterator[ShardTask]:
    """Pending records (not in ``done``) cut into shards ``part-<run>-<index>``, streamed; a
    duplicated id in the source is refused."""
    run = out.next_run()
    seen: set[str] = set()

    def pending() -> Iterator[ImageRecord]:
        for record in source.records():
            if record.id in seen:
                raise InvalidArgumentError("input", f"id {record.id!r} appears twice in {source.root}")
            seen.add(record.id)
            if record.id not in done:
                yield record

    records = pending()
    for index in itertools.count():
        chunk = tuple(itertools.islice(records, shard_size))
        if not chunk:
            return
        yield ShardTask(shard_name(run, index), chunk)
