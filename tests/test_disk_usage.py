"""The suite cleans up after itself (issue 27): retention settings, the disk monitor's figures, and a
green inner run that leaves its temporary folder empty while printing the disk it wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.disk_usage import MIB, DiskMonitor, tree_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_a_green_run_keeps_no_temporary_folder() -> None:
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["tmp_path_retention_policy"] == "failed"
    assert ini["tmp_path_retention_count"] == "1"


def test_tree_bytes_counts_every_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 1000)
    (tmp_path / "y.bin").write_bytes(b"\0" * 24)
    assert tree_bytes(tmp_path) == 1024
    assert tree_bytes(tmp_path / "gone") == 0


def test_the_monitor_keeps_the_peak_after_files_are_removed(tmp_path: Path) -> None:
    monitor = DiskMonitor(tmp_path, poll_s=3600)  # sampled by hand below
    big = tmp_path / "model.onnx"
    big.write_bytes(b"\0" * (3 * MIB))
    monitor.sample()
    big.unlink()
    monitor.sample()
    assert monitor.peak_tree == 3 * MIB
    assert "peak 3 MiB, left behind 0 MiB" in monitor.summary()


def test_an_inner_green_run_removes_what_it_wrote(tmp_path: Path) -> None:
    """A real pytest run with the project's settings and hooks: a session fixture writes 2 MiB, the
    run is green, and afterwards pytest's temporary root holds no file; the summary line is printed."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\ntmp_path_retention_policy = failed\ntmp_path_retention_count = 1\n"
    )
    (project / "conftest.py").write_text("pytest_plugins = ['tests.conftest']\n")
    (project / "test_inner.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture(scope='session')\n"
        "def shared(tmp_path_factory):\n"
        "    path = tmp_path_factory.mktemp('shared') / 'm.bin'\n"
        "    path.write_bytes(bytes(2 * 1024 * 1024))\n"
        "    return path\n\n"
        "def test_writes(shared, tmp_path):\n"
        "    (tmp_path / 't.bin').write_bytes(bytes(1024))\n"
        "    assert shared.stat().st_size == 2 * 1024 * 1024\n"
    )
    temproot = tmp_path / "temproot"
    temproot.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DEBUG_TEMPROOT": str(temproot)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert tree_bytes(temproot) == 0, sorted(str(p) for p in temproot.rglob("*"))
    summary = r"disk: pytest temporary folder \S+ peak \d+ MiB, left behind 0 MiB"
    assert re.search(summary, run.stdout), run.stdout
