"""The Ray engine: the same :class:`ShardWorker` as the local engine, one per Ray actor, driven by
Ray Data's ``map_batches`` over the job's shard tasks (one task = one shard, so file names are
those the local engine would write and resume works the same).

Without ``address`` (or ``RAY_ADDRESS``) a local Ray starts with the job's resources and stops
with it; with one, the job joins that cluster (OUT and the images must then be on storage every
node sees, at the same path).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.batch.job import JobConfig, ShardTask
from camserve.batch.worker import ShardSummary, ShardWorker
from camserve.errors import InvalidArgumentError, UnsupportedError

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # tasks and summaries only: maps go to disk from actors


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, else start a local Ray for the job
    actors: int = 0  # 0: as many as the cluster's CPUs allow
    cpus_per_actor: float = 1.0  # also ONNX Runtime's intra-op threads in the actor
    gpus_per_actor: float = 0.0

    def check(self) -> None:
        if self.actors < 0:
            raise InvalidArgumentError(
                "--ray-actors", f"must be >= 0 (0: fill the cluster), got {self.actors}"
            )
        if self.cpus_per_actor <= 0:
            raise InvalidArgumentError("--ray-cpus-per-actor", f"must be > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise InvalidArgumentError("--ray-gpus-per-actor", f"must be >= 0, got {self.gpus_per_actor}")


class RayShardWorker:
    """Ray Data's callable class: one Explainer (inside a ShardWorker) per actor."""

    def __init__(self, job: JobConfig) -> None:
        self.worker = ShardWorker(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tasks = [ShardTask.from_dict(json.loads(str(text))) for text in batch["task"]]
        summaries = list(self.worker.run(tasks))
        return {
            "name": np.array([s.name for s in summaries]),
            "rows": np.array([s.rows for s in summaries], dtype=np.int64),
            "errors": np.array([s.errors for s in summaries], dtype=np.int64),
        }


def run_ray(job: JobConfig, tasks: Sequence[ShardTask], options: RayOptions) -> Iterator[ShardSummary]:
    """Every shard on a pool of Ray actors; summaries as shards land on disk."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UnsupportedError("--engine ray needs Ray: pip install 'camserve[ray]'") from None
    options.check()
    if not tasks:
        return
    threads = max(1, math.ceil(options.cpus_per_actor))
    actor_job = job.with_runtime(intra_op_threads=threads, inter_op_threads=1)
    address = options.address or os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(**_local_resources(options), include_dashboard=False, log_to_driver=True)
            started = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # camserve's own progress reports shards
        actors = options.actors or _actors_that_fit(ray.cluster_resources(), options)
        actors = min(actors, len(tasks))
        dataset = ray.data.from_items(
            [{"task": json.dumps(task.to_dict())} for task in tasks], override_num_blocks=len(tasks)
        )
        results = dataset.map_batches(
            RayShardWorker,
            fn_constructor_kwargs={"job": actor_job},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
        )
        for batch in results.iter_batches(batch_size=1, batch_format="numpy"):
            for name, rows, errors in zip(batch["name"], batch["rows"], batch["errors"], strict=True):
                yield ShardSummary(str(name), int(rows), int(errors))
    finally:
        if started:
            ray.shutdown()


def _local_resources(options: RayOptions) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    if options.actors:
        cpus = max(1, math.ceil(options.actors * options.cpus_per_actor))
    resources: dict[str, Any] = {"num_cpus": cpus, "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
    if options.gpus_per_actor:
        resources["num_gpus"] = math.ceil(max(options.actors, 1) * options.gpus_per_actor)
    return resources


def _actors_that_fit(resources: dict[str, float], options: RayOptions) -> int:
    fit = int(resources.get("CPU", 1) // options.cpus_per_actor)
    if options.gpus_per_actor:
        fit = min(fit, int(resources.get("GPU", 0) // options.gpus_per_actor))
    if fit < 1:
        raise InvalidArgumentError(
            "--ray-cpus-per-actor/--ray-gpus-per-actor", f"no actor fits the cluster's resources {resources}"
        )
    return fit
