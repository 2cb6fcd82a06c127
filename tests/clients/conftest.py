"""Fixtures of the client tests: the service tests' default-model server, Explainer and images, plus a
server with TLS, client certificates (mTLS) and a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.certs import Certs, make_certs
from tests.service.conftest import digit_pixels, explainer, models_root, server  # noqa: F401 (fixtures)
from tests.service.service_helpers import ServerProcess, secure_serve_argv

TOKEN = "client-Token_0123456789"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("client-certs"))


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client-token") / "token.txt"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="session")
def secure_server(
    models_root: Path,  # noqa: F811 (the imported fixture)
    certs: Certs,
    token_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """mTLS (client certificates signed by certs.ca) and a bearer token."""
    argv = secure_serve_argv(models_root, certs, token_file)
    process = ServerProcess(argv, tmp_path_factory.mktemp("client-secure") / "serve.log")
    yield process
    process.stop()
