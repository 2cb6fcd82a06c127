"""The Ray engine (a local Ray with 2 CPUs and a small object store): the same rows, maps and errors
as the local engine, resume across runs, and the command line joining a running cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from camserve.batch import read_errors, read_manifest, read_maps, read_rows
from camserve.batch.encoding import TOLERANCE
from camserve.batch.engine_ray import RayOptions
from camserve.batch.run import run_batch
from tests.batch.batch_data import BAD, METHODS, make_job

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs camserve[ray] (installed by scripts/bootstrap.sh)"
)

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE_BYTES = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def ray_cluster():
    context = ray.init(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False)
    yield context.address_info["address"]
    ray.shutdown()
    # the session's logs and spilled objects under /tmp/ray: nothing a failure report needs (issue 27)
    shutil.rmtree(context.address_info["session_dir"], ignore_errors=True)


@pytest.fixture(scope="module")
def ray_out(tmp_path_factory, ray_cluster, dataset, explainer) -> Path:
    root, _ = dataset
    out = tmp_path_factory.mktemp("batch") / "ray"
    summary = run_batch(
        make_job(root, out, shard_size=48),
        engine="ray",
        ray=RayOptions(actors=2),
        progress=False,
        explainer=explainer,
    )
    assert (summary.rows, summary.errors) == (len(dataset[1]), len(BAD))
    return out


def test_ray_rows_and_errors_equal_the_local_engine(ray_out, local_out, dataset):
    _, ids = dataset
    got = read_rows(ray_out, ["id", "path", "top_ids", "target_ids"]).sort_by("id").to_pylist()
    expected = read_rows(local_out, ["id", "path", "top_ids", "target_ids"]).sort_by("id").to_pylist()
    assert [row["id"] for row in got] == ids
    assert got == expected
    assert read_errors(ray_out).sort_by("id").to_pylist() == read_errors(local_out).sort_by("id").to_pylist()
    assert read_manifest(ray_out)["job"] == read_manifest(local_out)["job"]


@pytest.mark.parametrize("method", METHODS)
def test_ray_maps_equal_explainer(ray_out, dataset, reference, method):
    _, ids = dataset
    np.testing.assert_allclose(
        read_maps(ray_out, ids=ids, method=method), reference.maps[method], rtol=0, atol=TOLERANCE["float16"]
    )


def _files(out: Path) -> set[str]:
    return {p.name for p in [*out.glob("part-*.parquet"), *(out / "errors").glob("*")]}


def test_ray_resume_after_sigkill_joining_a_cluster_from_the_cli(tmp_path, ray_cluster, dataset, explainer):
    """Half the images with Ray in-process; then the whole folder with `camserve batch --engine ray
    --ray-address` into the same OUT, SIGKILLed mid-run and run again: the rest is explained, every
    id exactly once, in new shard files."""
    root, ids = dataset
    half = tmp_path / "half"
    for image_id in [*ids[::2], BAD[0]]:
        (half / image_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / image_id, half / image_id)
    out = tmp_path / "out"
    job = make_job(half, out, methods=("gradcam",), shard_size=40)
    first = run_batch(job, engine="ray", ray=RayOptions(actors=2), progress=False, explainer=explainer)
    assert (first.rows, first.errors) == (len(ids[::2]), 1)
    first_files = sorted(p.name for p in out.glob("part-*.parquet"))
    assert first_files == [f"part-00001-{n:06d}.parquet" for n in range(len(first_files))]

    command = [sys.executable, "-m", "camserve.cli", "batch", "--input", str(root), "--out", str(out)]
    command += ["--engine", "ray", "--ray-address", ray_cluster, "--ray-actors", "2"]
    command += ["--method", "gradcam", "--shard-size", "8", "--batch-size", "8", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*.parquet"))) < len(first_files) + 2 and process.poll() is None:
        assert time.monotonic() < deadline, "the Ray job wrote no shards"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Ray stops a dead driver's actors within moments; wait until nothing more lands.
    files, stable_since = _files(out), time.monotonic()
    while time.monotonic() - stable_since < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        if _files(out) != files:
            files, stable_since = _files(out), time.monotonic()
    assert len(read_rows(out, ["id"])) < len(ids), "killed before the end"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 1, finished.stderr
    assert f"{len(ids)} rows, {len(BAD)} errors" in finished.stdout
    rows = read_rows(out, ["id"]).column("id").to_pylist()
    assert sorted(rows) == ids  # every id exactly once
    assert sorted(read_errors(out).column("id").to_pylist()) == sorted(BAD)
    new = [p.name for p in out.glob("part-*.parquet") if p.name not in first_files]
    assert new and all(name.startswith(("part-00002-", "part-00003-")) for name in new)
