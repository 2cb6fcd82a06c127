"""``camserve batch``: explain a whole dataset into resumable Parquet shards (local or Ray engine).

Modules: ``sources`` (folder / list / Parquet inputs), ``job`` (the job's definition, manifest and
shard plan), ``worker`` (the per-batch function both engines run), ``engine_local`` and
``engine_ray``, ``outdir`` (atomic shards, resume), ``encoding`` (how maps are stored) and
``reader`` (maps back as ``Explainer`` gives them). See docs/batch.md.
"""

from __future__ import annotations

from camserve.batch.reader import read_errors, read_manifest, read_maps, read_rows

__all__ = ["read_errors", "read_manifest", "read_maps", "read_rows"]
