"""Start a `camserve serve` process for a benchmark and wait until it listens (shared by bench/);
the start-up itself is camserve.loadgen.local_server, which `camserve bench` uses too."""

from __future__ import annotations

import subprocess
from pathlib import Path

from camserve.loadgen.local_server import LocalServer


def start_server(models: str | None, flags: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """The server process (port chosen by the OS, log in ``log_path``) and its 127.0.0.1 address."""
    server = LocalServer(models, flags, log_path, metrics=False)
    return server.proc, server.address
