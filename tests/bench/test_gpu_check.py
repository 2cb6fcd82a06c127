"""bench/gpu_check.py: its dry run (the same code on the CPU: Triton's interpreter, the embedded model,
a short `camserve bench` load) prints its one table with every check passing; without a GPU the real
check refuses in one line with status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*flags: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    argv = [sys.executable, str(SCRIPT), *flags]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run")
def test_without_a_gpu_the_check_refuses_in_one_line() -> None:
    done = _run(timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device is visible to torch: this check needs a GPU"
    ]


@pytest.mark.slow
def test_the_dry_run_prints_one_table_of_passing_checks() -> None:
    done = _run("--dry-run", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = done.stdout.splitlines()
    (title,) = [n for n, line in enumerate(lines) if line.startswith("GPU check, dry run on the CPU")]
    rows = lines[title + 2 : -1]
    assert all(row.endswith("  ok") for row in rows), "\n".join(rows)
    checks = [re.split(r"\s{2,}", row)[0] for row in rows]
    # 2 shapes x 2 batches x (3 fused methods, Layer-CAM, HiRes-CAM, the three weights in one pass)
    for method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        assert checks.count(f"kernel {method}") == 4, method
    assert checks.count("kernel weights x3") == 4
    assert checks.count("kernel upsample") == 2 and checks.count("kernel upsample uint8") == 2
    assert checks.count("graph CPU vs CPU") == 1 and checks.count("graph CPU vs CPU (TF32, info)") == 1
    (load,) = [row for row in rows if row.startswith("load camserve bench")]
    assert "2 clients, default on cpu" in load and "no errors" in load
    assert lines[-1] == f"{len(rows)}/{len(rows)} checks passed" and len(rows) == 31
