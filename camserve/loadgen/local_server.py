"""A ``camserve serve`` child process for a benchmark: a free port, a Prometheus endpoint, its log in a
file; ready once it logs that it listens. Used by ``camserve bench`` without ``--server`` and by the
scripts in bench/."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from camserve.errors import CamserveError

START_TIMEOUT_S = 180.0  # a cold start imports torch and onnxruntime on a busy machine
STOP_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"camserve listening on [^\s:]+:(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_port(proc: subprocess.Popen, log: Callable[[], str], timeout_s: float) -> int | None:
    """The port a starting `camserve serve` says in its log (``log()``) that it listens on; None when
    the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _LISTENING.search(log())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            return None
        time.sleep(0.1)
    return None


class LocalServer:
    """``with LocalServer(models, flags, log_path) as server:`` gives ``server.address`` and
    ``server.metrics_url``."""

    def __init__(
        self, models: str | None, flags: Sequence[str], log_path: Path, metrics: bool = True
    ) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "camserve.cli", "serve", "--port", "0", *flags]
        if models:
            argv += ["--models", models]
        self.metrics_url = None
        if metrics and "--metrics-port" not in flags:
            port = free_port()
            argv += ["--metrics-port", str(port)]
            self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self._log = open(log_path, "wb")  # noqa: SIM115 -- the server writes to it until it stops
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.address = f"127.0.0.1:{self._wait_for_port()}"

    def _wait_for_port(self) -> int:
        port = listening_port(self.proc, self.log, START_TIMEOUT_S)
        if port is None:
            self.stop()
            lines = self.log().strip().splitlines() or ["(no output)"]
            raise CamserveError(f"the server did not start ({self.proc.returncode=}): {lines[-1]}")
        return port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
