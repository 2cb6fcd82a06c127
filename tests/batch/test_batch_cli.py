"""`camserve batch` as a user runs it: one-line errors with exit status 2 before any work, exit 1
when images failed, and a run killed with SIGKILL at any moment that a re-run completes with every
id exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from camserve.batch import read_maps
from camserve.batch.encoding import TOLERANCE
from camserve.cli import main
from tests.batch.batch_data import BAD, METHODS

REPO = Path(__file__).resolve().parents[2]


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(["batch", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("camserve batch: error: "), err
    return err[0]


def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, dataset):
    root, _ = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = ["--out", str(tmp_path / "out")]
    assert "holds no images" in _cli_error(capsys, ["--input", str(empty), *out])
    assert "no such file" in _cli_error(capsys, ["--input", str(tmp_path / "nothing"), *out])
    assert "--model" in _cli_error(capsys, ["--input", str(root), "--model", str(tmp_path / "nomodel"), *out])
    assert "is not a directory" in _cli_error(capsys, ["--input", str(root), "--out", str(a_file)])
    assert "cannot write" in _cli_error(capsys, ["--input", str(root), "--out", str(a_file / "sub")])
    assert "--ray-actors: applies only with --engine ray" in _cli_error(
        capsys, ["--input", str(root), *out, "--ray-actors", "2"]
    )
    assert "--map-size: expected" in _cli_error(capsys, ["--input", str(root), *out, "--map-size", "7by7"])
    assert "apply only to a Parquet" in _cli_error(capsys, ["--input", str(root), *out, "--path-column", "p"])
    assert "unknown method" in _cli_error(capsys, ["--input", str(root), *out, "--method", "nocam"])
    # --target SPEC is checked against the model before any image is explained
    line = _cli_error(capsys, ["--input", str(root), *out, "--target", "region:1:box=0,0,8,8"])
    assert "--target: targets[0][0].kind: a model with a classification output takes" in line
    assert "--target nope:1: unknown target kind" in _cli_error(
        capsys, ["--input", str(root), *out, "--target", "nope:1"]
    )
    line = _cli_error(capsys, ["--input", str(root), *out, "--target", "1", "--targets-column", "t"])
    assert "--targets-column: give either --target or --targets-column" in line
    assert not (tmp_path / "out").exists()


def test_changed_options_refused_on_the_command_line(capsys, tmp_path, dataset):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:3]))
    argv = ["--input", str(listing), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(["batch", *argv]) == 0
    assert "explained 3 images, 0 failed" in capsys.readouterr().out
    line = _cli_error(capsys, [*argv, "--method", "cam"])
    assert "another job (methods: ['gradcam'] -> ['cam'])" in line and "--overwrite" in line
    assert "another job (options.normalize: True -> False)" in _cli_error(capsys, [*argv, "--raw"])
    assert main(["batch", *argv, "--method", "cam", "--overwrite"]) == 0


def _shard_ids(out: Path) -> list[str]:
    ids: list[str] = []
    for path in [*sorted(out.glob("part-*.parquet")), *sorted((out / "errors").glob("part-*.parquet"))]:
        ids.extend(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return ids


def test_sigkill_at_any_moment_then_rerun_gives_every_id_once(tmp_path, dataset, local_out):
    root, ids = dataset
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camserve.cli", "batch", "--input", str(root), "--out", str(out)]
    command += ["--shard-size", "8", "--batch-size", "4", "--no-progress"]
    for method in METHODS:
        command += ["--method", method]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for shards_before_kill in (2, 9):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while len(list(out.glob("part-*.parquet"))) < shards_before_kill and process.poll() is None:
            assert time.monotonic() < deadline, "the batch job wrote no shards"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = _shard_ids(out)
        assert len(done) == len(set(done)) < len(ids) + len(BAD), "killed before the end"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 1, finished.stderr  # images failed: exit 1, and the summary says so
    assert f"{len(ids)} rows, {len(BAD)} errors" in finished.stdout
    everything = _shard_ids(out)
    assert sorted(everything) == sorted([*ids, *BAD])  # every id exactly once
    assert not list(out.glob(".tmp-*")) and not list((out / "errors").glob(".tmp-*"))
    for method in METHODS:
        np.testing.assert_allclose(
            read_maps(out, ids=ids, method=method),
            read_maps(local_out, ids=ids, method=method),
            atol=TOLERANCE["float16"],
        )


@pytest.mark.parametrize("flag", ["--ray-address", "--ray-cpus-per-actor", "--ray-gpus-per-actor"])
def test_ray_flags_need_the_ray_engine(capsys, tmp_path, dataset, flag):
    root, _ = dataset
    line = _cli_error(capsys, ["--input", str(root), "--out", str(tmp_path / "o"), flag, "1"])
    assert f"{flag}: applies only with --engine ray" in line


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("actors", -1, "--ray-actors"),
        ("cpus_per_actor", 0.0, "--ray-cpus-per-actor"),
        ("gpus_per_actor", -1.0, "--ray-gpus-per-actor"),
    ],
)
def test_ray_option_errors_name_flags_that_exist(field, value, flag):
    from dataclasses import replace

    from camserve.batch.engine_ray import RayOptions
    from camserve.cli import build_parser
    from camserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as raised:
        replace(RayOptions(), **{field: value}).check()
    assert raised.value.argument == flag
    batch = build_parser()._subparsers._group_actions[0].choices["batch"]
    assert flag in batch._option_string_actions
