"""Start a `camserve serve` process for a benchmark and wait until it listens (shared by bench/)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 120.0


def start_server(models: str | None, flags: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """The server process (port chosen by the OS, log in ``log_path``) and its 127.0.0.1 address."""
    argv = [sys.executable, "-m", "camserve.cli", "serve", "--port", "0", *flags]
    if models:
        argv += ["--models", models]
    log = open(log_path, "wb")  # noqa: SIM115 -- the server writes to it until it stops
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"camserve listening on [^\s:]+:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return proc, f"127.0.0.1:{match.group(1)}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log_path.read_text(errors='replace')}")
