"""A ``camserve serve`` child process for a benchmark: a free port, a Prometheus endpoint, its log in a
file; ready once it logs that it listens. Used by ``camserve bench`` without ``--server`` and by the
scripts in bench/."""

from __future__ import annotations

import re
import signal
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


class ServerStartError(CamserveError):
    """The server exited or did not listen in time; ``log`` holds all it wrote."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class ServerProcess:
    """A ``camserve serve`` child process (``argv``) in its own session, stdout and stderr in
    ``log_path``; ``port`` and ``address`` once it listens. The one launcher of server processes:
    ``camserve bench``, bench/ and the tests start theirs with it (or :class:`LocalServer`)."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.log_path = log_path
        self.metrics_url: str | None = None
        self._log = open(log_path, "wb")  # noqa: SIM115 -- the server writes to it until it stops
        self.proc = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        port = listening_port(self.proc, self.log, start_timeout_s)
        if port is None:
            exited = self.proc.poll()
            self.stop()
            why = (
                f"exited with {exited}" if exited is not None else f"did not start within {start_timeout_s} s"
            )
            lines = self.log().strip().splitlines() or ["(no output)"]
            raise ServerStartError(f"the server {why}: {lines[-1]}", self.log())
        self.port = port
        self.address = f"127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM: the server drains (``service.grace_period_s``) and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        self.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_argv(models: str | None, *flags: str) -> list[str]:
    """``python -m camserve.cli serve`` on a port the OS picks, on ``models`` (None: the default
    model), plus ``flags``."""
    argv = [sys.executable, "-m", "camserve.cli", "serve", "--port", "0", *flags]
    return argv + (["--models", models] if models else [])


class LocalServer(ServerProcess):
    """``with LocalServer(models, flags, log_path) as server:`` gives ``server.address`` and, with
    ``metrics``, ``server.metrics_url`` (a free port for the Prometheus endpoint)."""

    def __init__(
        self, models: str | None, flags: Sequence[str], log_path: Path, metrics: bool = True
    ) -> None:
        argv = serve_argv(models, *flags)
        metrics_url = None
        if metrics and "--metrics-port" not in flags:
            port = free_port()
            argv += ["--metrics-port", str(port)]
            metrics_url = f"http://127.0.0.1:{port}/metrics"
        super().__init__(argv, log_path)
        self.metrics_url = metrics_url
