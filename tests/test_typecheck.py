"""mypy over the camserve distribution (camserve/, export/, kernels/, service/; generated stubs
excluded) is clean: CI runs only ``python -m pytest``, so the type check lives here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1200  # a cold mypy run over ~100 modules that import torch takes a few minutes on 2 cores


def test_mypy_finds_no_errors() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
