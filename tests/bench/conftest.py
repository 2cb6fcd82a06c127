"""A `camserve serve` process on the default model with a Prometheus endpoint, shared by the bench tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from camserve.loadgen.local_server import free_port
from tests.service.service_helpers import ServerProcess, serve_argv


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """(the server, its metrics URL)."""
    port = free_port()
    process = ServerProcess(
        serve_argv(None, "--metrics-port", str(port)), tmp_path_factory.mktemp("bench-server") / "serve.log"
    )
    yield process, f"http://127.0.0.1:{port}/metrics"
    process.stop()
