"""Run the ``tritonserver`` binary that the PyPI wheel ``nvidia-pytriton`` ships on a model repository,
with its python backend (it has no onnxruntime backend: that one is in NVIDIA's container).

    python -m camserve.export.triton_server triton-models            # ports 8000 (HTTP), 8001, 8002

The wheel's binary needs its bundled libraries on ``LD_LIBRARY_PATH`` and a python backend stub built
for this interpreter's version in the backend folder; the stub embeds the ``libpython`` this
interpreter was built with and imports the packages of the environment whose ``bin`` comes first on
``PATH`` (numpy, onnxruntime, Pillow). This module lays that out as pytriton itself does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

from camserve.errors import CamserveError, InvalidArgumentError

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def wheel_root() -> Path:
    """pytriton's ``tritonserver`` folder (bin/, backends/, python_backend_stubs/)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise CamserveError("the tritonserver binary needs the nvidia-pytriton wheel (docs/operations.md)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def server_environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(root.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def backend_directory(root: Path, into: Path) -> Path:
    """A copy of the wheel's backends with this Python version's stub in the python backend."""
    backends = into / "backends"
    shutil.copytree(root / "backends", backends)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise CamserveError(f"nvidia-pytriton has no python backend stub for Python {version}")
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


class TritonServer:
    """``tritonserver`` on ``repository``, listening on 127.0.0.1 (or ``host``); a context manager.

    ``config_name`` "python": the python backend's configs (configs/python.pbtxt), which the exported
    repositories need on this binary. Output goes to ``log`` (None: a temporary file, removed by stop()).
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        config_name: str | None = "python",
        log: str | os.PathLike[str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        if not Path(repository).is_dir():
            raise InvalidArgumentError("repository", f"{repository} is not a directory")
        self.root = wheel_root()
        self.http = f"{host}:{http_port}"
        self.grpc = f"{host}:{grpc_port}"
        self.metrics_url = f"http://{host}:{metrics_port}/metrics"
        self._work = Path(tempfile.mkdtemp(prefix="camserve-tritonserver-"))
        self.log_path = Path(log) if log else self._work / "tritonserver.log"
        argv = [
            str(self.root / "bin" / "tritonserver"),
            f"--model-repository={Path(repository).resolve()}",
            f"--backend-directory={backend_directory(self.root, self._work)}",
            f"--http-address={host}",
            f"--http-port={http_port}",
            f"--grpc-address={host}",
            f"--grpc-port={grpc_port}",
            f"--metrics-address={host}",
            f"--metrics-port={metrics_port}",
            "--allow-gpu-metrics=false",
            *([f"--model-config-name={config_name}"] if config_name else []),
            *extra,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            argv, env=server_environment(self.root), stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every model is loaded (HTTP /v2/health/ready); else CamserveError with the log's tail."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CamserveError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise CamserveError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m camserve.export.triton_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("repository", help="a model repository (camserve export --triton-repository)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--config-name", default="python", help="configs/NAME.pbtxt per model ('' for config.pbtxt)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on SIGTERM too
    try:
        server = TritonServer(
            args.repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            host=args.host,
            config_name=args.config_name or None,
        )
    except CamserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server.wait_ready()
        print(
            f"tritonserver: HTTP {server.http}, gRPC {server.grpc}, metrics {server.metrics_url}", flush=True
        )
        print(f"log: {server.log_path} (Ctrl-C stops it)", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    except CamserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
