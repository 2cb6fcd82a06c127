"""`camserve batch` against hostile input and a hostile disk (issue 26, items 2 and 6): the service's
image checks with a pixel limit (a bad image is an error row, the job goes on), one job per OUT,
file names that are not UTF-8, and a disk that refuses writes (exit 3, one line, true counts)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.hostile_images import HOSTILE_IMAGES, png
from camserve.batch import read_errors, read_manifest, read_maps, read_rows
from camserve.batch.outdir import LOCK, OutputDir
from camserve.batch.run import run_batch
from camserve.batch.sources import text_id
from camserve.cli import main
from camserve.errors import StorageError
from tests.batch.batch_data import make_job

REPO = Path(__file__).resolve().parents[2]


def _one_line(capsys, argv: list[str], status: int) -> str:
    assert main(["batch", *argv]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("camserve batch: error: "), err
    return err[0]


def _good(root: Path, names: list[str]) -> list[str]:
    rng = np.random.default_rng(1)
    from PIL import Image

    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / name)
    return names


def test_hostile_images_become_error_rows_and_the_job_goes_on(tmp_path, explainer):
    root = tmp_path / "in"
    root.mkdir()
    good = _good(root, ["a.png", "b.jpg", "c.webp"])
    for name, (make, _) in HOSTILE_IMAGES.items():
        (root / f"{name}.img").write_bytes(make())
    (root / "big.png").write_bytes(png(1001, 1000))  # over the job's --max-image-pixels below
    job = dataclasses.replace(
        make_job(root, tmp_path / "out", methods=("gradcam",)), max_image_pixels=1_000_000
    )
    summary = run_batch(job, progress=False, explainer=explainer)
    assert (summary.rows, summary.errors) == (len(good), len(HOSTILE_IMAGES) + 1)
    assert sorted(read_rows(job.out, ["id"]).column("id").to_pylist()) == sorted(good)
    messages = {e["id"]: e["message"] for e in read_errors(job.out).to_pylist()}
    for name, (_, phrase) in HOSTILE_IMAGES.items():
        assert (
            messages[f"{name}.img"].startswith(str(root / f"{name}.img"))
            and phrase in messages[f"{name}.img"]
        )
    assert "image is 1001x1000; at most 1000000 pixels are decoded" in messages["big.png"]
    maps = read_maps(job.out, ids=good, method="gradcam")
    expected = explainer.explain([str(root / name) for name in good], methods=["gradcam"]).maps["gradcam"]
    np.testing.assert_allclose(maps, expected, atol=2e-3)


def test_a_file_over_the_size_limit_is_an_error_row_unread(tmp_path, explainer):
    root = tmp_path / "in"
    root.mkdir()
    _good(root, ["a.png"])
    (root / "huge.png").write_bytes(png(200, 200) + b"\x00" * 5000)
    job = dataclasses.replace(
        make_job(root, tmp_path / "out", methods=("gradcam",)), max_image_file_bytes=4000
    )
    summary = run_batch(job, progress=False, explainer=explainer)
    assert (summary.rows, summary.errors) == (1, 1)
    [error] = read_errors(job.out).to_pylist()
    assert error["id"] == "huge.png" and "the file is over 4000 bytes" in error["message"]


def test_file_names_that_are_not_utf8_become_escaped_ids(tmp_path, explainer):
    root = tmp_path / "in"
    root.mkdir()
    _good(root, ["plain.png"])
    raw = os.fsencode(root) + b"/caf\xe9 100%.png"
    shutil.copyfile(root / "plain.png", raw)
    with open(os.fsencode(root) + b"/bad\xff.png", "wb") as file:
        file.write(b"not an image")
    out = tmp_path / "out"
    summary = run_batch(make_job(root, out, methods=("gradcam",)), progress=False, explainer=explainer)
    assert (summary.rows, summary.errors) == (2, 1)
    rows = read_rows(out, ["id", "path"]).to_pylist()
    assert sorted(r["id"] for r in rows) == ["caf%E9 100%25.png", "plain.png"]
    assert {r["path"] for r in rows} == {str(root / "plain.png"), f"{root}/caf%E9 100%25.png"}
    [error] = read_errors(out).to_pylist()
    assert error["id"] == "bad%FF.png" and "not an image in an accepted format" in error["message"]
    maps = read_maps(out, ids=["caf%E9 100%25.png", "plain.png"], method="gradcam")
    np.testing.assert_array_equal(maps[0], maps[1])  # the same pixels
    # a re-run finds every escaped id done; a text list with the same bytes gives the same ids
    again = run_batch(make_job(root, out, methods=("gradcam",)), progress=False, explainer=explainer)
    assert (again.rows, again.errors, again.skipped) == (0, 0, 3)
    listing = tmp_path / "list.bin"
    listing.write_bytes(b"in/caf\xe9 100%.png\n")
    listed = run_batch(
        make_job(listing, tmp_path / "out2", methods=("gradcam",)), progress=False, explainer=explainer
    )
    assert listed.rows == 1
    assert read_rows(tmp_path / "out2", ["id"]).column("id").to_pylist() == ["in/caf%E9 100%25.png"]


def test_a_second_job_on_an_out_in_use_is_refused_with_one_line(capsys, tmp_path, dataset):
    root, _ = dataset
    out = tmp_path / "out"
    with OutputDir(out).owned():
        line = _one_line(capsys, ["--input", str(root), "--out", str(out), "--no-progress"], 2)
    assert f"{out} is in use by another camserve batch job (pid {os.getpid()} on " in line
    assert "wait for it to end or use another --out" in line
    assert not (out / "manifest.json").exists()  # refused before anything was written


def test_two_jobs_started_together_on_one_out(capsys, tmp_path, dataset):
    """The issue's case: a second job (another input) while the first runs is refused; the first
    ends with every one of its ids once; the second, run after it, resumes into the same OUT."""
    root, ids = dataset
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("\n".join(str(root / i) for i in ids[:40]) + "\n")
    second.write_text("\n".join(str(root / i) for i in ids[40:80]) + "\n")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--shard-size", "4", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "camserve.cli", "batch", "--input", str(first), *argv]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the first job did not start"
            time.sleep(0.05)
        line = _one_line(capsys, ["--input", str(second), *argv], 2)
        assert f"is in use by another camserve batch job (pid {process.pid} on " in line
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr
    assert sorted(read_rows(out, ["id"]).column("id").to_pylist()) == sorted(str(root / i) for i in ids[:40])
    assert main(["batch", "--input", str(second), *argv]) == 0
    rows = read_rows(out, ["id"]).column("id").to_pylist()
    assert sorted(rows) == sorted(str(root / i) for i in ids[:80]) and len(rows) == len(set(rows))
    assert read_manifest(out)["counts"]["rows"] == 80
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def _failing_writes(monkeypatch, code: int, after: int) -> None:
    """Writes into OUT fail with ``code`` (as the kernel's would) once ``after`` shard files are written."""
    import camserve.batch.outdir as outdir

    written = []
    original = outdir.write_atomic

    def write_atomic(path: Path, write: object, prefix: str) -> None:
        if len(written) >= after:
            raise OSError(code, os.strerror(code))
        if path.suffix == ".parquet":
            written.append(path)
        original(path, write, prefix)  # type: ignore[arg-type]

    monkeypatch.setattr(outdir, "write_atomic", write_atomic)


def test_a_full_disk_mid_run_ends_with_exit_3_and_true_counts(capsys, monkeypatch, tmp_path, dataset):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:20]) + "\n")
    out = tmp_path / "out"
    _failing_writes(monkeypatch, errno.ENOSPC, after=2)
    argv = ["--input", str(listing), "--out", str(out), "--shard-size", "4", "--no-progress"]
    line = _one_line(capsys, argv, 3)
    assert "No space left on device (ENOSPC)" in line and str(out) in line
    manifest = read_manifest(out)
    # shards 1 and 2 landed, the manifest counting shard 2 did not: shard 2 was removed
    assert manifest["counts"] == OutputDir(out).counts() == {"rows": 4, "errors": 0, "shards": 1}
    assert not list(out.glob(".tmp-*"))
    monkeypatch.undo()  # room again: the same command resumes
    assert main(["batch", *argv]) == 0
    assert read_manifest(out)["counts"] == {"rows": 20, "errors": 0, "shards": 5}


def test_a_read_only_disk_ends_with_exit_3(capsys, monkeypatch, tmp_path, dataset):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text(str(root / ids[0]) + "\n")
    _failing_writes(monkeypatch, errno.EROFS, after=0)
    line = _one_line(capsys, ["--input", str(listing), "--out", str(tmp_path / "out"), "--no-progress"], 3)
    assert "Read-only file system (EROFS)" in line
    with pytest.raises(StorageError):
        run_batch(make_job(listing, tmp_path / "out2"), progress=False)


def test_a_file_size_limit_from_the_kernel_ends_with_exit_3(tmp_path, dataset):
    """A real refusal by the kernel (RLIMIT_FSIZE: EFBIG) in a real process: one line, exit 3."""
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:8]) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camserve.cli", "batch", "--input", str(listing), "--out", str(out)]
    command += ["--png", "--no-progress"]

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))  # the manifest fits, a shard not

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert finished.returncode == 3, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if "Traceback" in line or "error:" in line]
    assert len(lines) == 1 and "(EFBIG)" in lines[0], finished.stderr
    assert read_manifest(out)["counts"] == {"rows": 0, "errors": 0, "shards": 0}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=8, unique=True))
def test_any_file_name_becomes_a_utf8_id(names):
    ids = [text_id(os.fsdecode(name)) for name in names]
    for name, image_id in zip(names, ids, strict=True):
        image_id.encode("utf-8")  # storable as Parquet text
        try:
            assert image_id == name.decode("utf-8")  # valid names are kept as they are
        except UnicodeDecodeError:
            assert "%" in image_id
    escaped = [i for n, i in zip(names, ids, strict=True) if not _utf8(n)]
    assert len(set(escaped)) == len(escaped)  # undecodable names never share an id


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize(("max_pixels", "at_once"), [(200 * 200, 1), (2 * 200 * 200, 2)])
def test_decode_workers_together_hold_at_most_the_largest_image(
    monkeypatch, tmp_path, explainer, max_pixels, at_once
):
    """Two decode threads and 200x200 images: with --max-image-pixels 40000 they decode one after
    another (the job's decode memory is one largest image, ~20 B per pixel), with twice that both."""
    import camserve.batch.worker as worker

    root = tmp_path / "in"
    root.mkdir()
    for n in range(6):
        (root / f"{n}.png").write_bytes(png(200, 200))
    running, most = [], []
    decode = worker.decode_checked

    def slow_decode(header, field, stop=None, channels=3):
        running.append(1)
        most.append(len(running))
        time.sleep(0.2)
        try:
            return decode(header, field, stop, channels)
        finally:
            running.pop()

    monkeypatch.setattr(worker, "decode_checked", slow_decode)
    job = dataclasses.replace(
        make_job(root, tmp_path / "out", methods=("gradcam",)), max_image_pixels=max_pixels
    )
    assert job.decode_workers == 2
    summary = run_batch(job, progress=False, explainer=explainer)
    assert (summary.rows, summary.errors) == (6, 0)
    assert max(most) == at_once


def test_a_worker_that_cannot_start_leaves_torchs_threads_as_they_were(tmp_path, dataset):
    """The worker runs torch single-threaded while it lives; a start that fails (no such model here)
    must not leave the caller's process at one thread (every later torch op would run on one core)."""
    import torch

    from camserve.batch.worker import ShardWorker
    from camserve.errors import CamserveError

    root, _ = dataset
    job = dataclasses.replace(make_job(root, tmp_path / "out"), model=str(tmp_path / "no-such-model"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(CamserveError):
            ShardWorker(job)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
