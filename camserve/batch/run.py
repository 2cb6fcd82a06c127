"""``run_batch``: checks everything that can fail before work, prepares OUT, plans the pending
shards and hands them to an engine; the manifest's counts are updated however the run ends."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from camserve.batch.engine_ray import RayOptions
from camserve.batch.job import JobConfig, check_targets, job_identity, manifest, plan_shards
from camserve.batch.outdir import OutputDir
from camserve.batch.progress import Progress, log
from camserve.batch.sources import ImageSource
from camserve.errors import InvalidArgumentError, StorageError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchSummary:
    rows: int  # explained by this run
    errors: int  # failed in this run
    skipped: int  # already in OUT from earlier runs
    total_rows: int  # in OUT now
    total_errors: int
    seconds: float
    images_per_second: float
    steady_images_per_second: float  # over the second half of the shards: without start-up

    def line(self, out: str) -> str:
        text = (
            f"explained {self.rows} images, {self.errors} failed, {self.skipped} already done "
            f"({self.images_per_second:.1f} images/s); "
            f"{out}: {self.total_rows} rows, {self.total_errors} errors"
        )
        return text + (f" (see {out}/errors/)" if self.total_errors else "")


def run_batch(
    job: JobConfig,
    engine: str = "local",
    ray: RayOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    explainer: Any | None = None,
) -> BatchSummary:
    """Explain every image of ``job.source`` not yet in ``job.out``. Bad input, a missing model, an
    unwritable OUT or one another job holds raise a CamserveError before any image is explained; a
    disk that refuses a shard later raises StorageError (the manifest then counts the shards written)."""
    from camserve.methods import parse_methods

    if engine not in ENGINES:
        raise InvalidArgumentError("--engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
    job.check()
    parse_methods(list(job.methods))
    source = ImageSource(job.source)
    if next(iter(source.records()), None) is None:
        raise InvalidArgumentError("--input", f"{source.root} holds no images")
    if explainer is None:
        from camserve.explainer import Explainer

        explainer = Explainer(job.model, config=job.config)
    explainer.check_methods(list(job.methods))
    check_targets(job, explainer)
    out = OutputDir(job.out)
    with out.owned():
        out.prepare(job_identity(job, explainer), overwrite)
        counts = out.counts()
        out.write_manifest(manifest(job, explainer, counts))
        done = out.done_ids()
        total = sum(1 for record in source.records() if record.id not in done)
        report = Progress(total, len(done), enabled=progress)
        start = time.monotonic()
        try:
            if engine == "local":
                from camserve.batch.engine_local import run_local

                summaries = run_local(job, plan_shards(source, out, job.shard_size, done), explainer)
            else:
                from camserve.batch.engine_ray import run_ray

                tasks = list(plan_shards(source, out, job.shard_size, done))
                summaries = run_ray(job, tasks, ray or RayOptions())
            for summary in summaries:
                report.update(summary.rows, summary.errors)
                # A shard counts once a manifest counting it is on disk; one the disk refuses to
                # count is removed, so the manifest is true however the run ends.
                landed = {
                    "rows": counts["rows"] + summary.rows,
                    "errors": counts["errors"] + summary.errors,
                    "shards": counts["shards"] + (1 if summary.rows else 0),
                }
                try:
                    out.write_manifest(manifest(job, explainer, landed))
                except StorageError:
                    out.remove_shard(summary.name)
                    raise
                counts = landed
        finally:
            report.close()
            with contextlib.suppress(StorageError):  # a full disk: the last manifest written is true
                out.write_manifest(manifest(job, explainer, out.counts()))
            counts = out.counts()
    seconds = time.monotonic() - start
    log.info("%s", report.line())
    return BatchSummary(
        rows=report.rows,
        errors=report.errors,
        skipped=len(done),
        total_rows=counts["rows"],
        total_errors=counts["errors"],
        seconds=seconds,
        images_per_second=(report.rows + report.errors) / max(seconds, 1e-9),
        steady_images_per_second=report.steady_images_per_second,
    )
