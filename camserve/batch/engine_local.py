"""The local engine: one process, one Explainer, a decode thread pool running ahead of the graph."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from camserve.batch.job import JobConfig, ShardTask
from camserve.batch.worker import ShardSummary, ShardWorker


def run_local(
    job: JobConfig, tasks: Iterable[ShardTask], explainer: object | None = None
) -> Iterator[ShardSummary]:
    """Every shard through one :class:`ShardWorker`; summaries as shards land on disk."""
    worker = ShardWorker(job, explainer)
    try:
        yield from worker.run(tasks)
    finally:
        worker.close()
