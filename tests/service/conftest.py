"""Fixtures of the service tests: the default model in a models root, a shared server process,
the in-process Explainer for reference answers, and test images."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from camserve.config import CamserveConfig
from tests.service.service_helpers import MODEL, ServerProcess, serve_argv


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root holding the embedded default model as ``digits`` (a copy: servers refuse model
    directories that resolve outside their root)."""
    from camserve.default_model import default_model_dir

    source = default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir)
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(source, root / MODEL)
    return root


@pytest.fixture(scope="session")
def server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server, default settings."""
    process = ServerProcess(serve_argv(models_root), tmp_path_factory.mktemp("server") / "serve.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def explainer(models_root: Path):
    """The in-process Explainer on the same model directory, for reference answers."""
    from camserve.explainer import Explainer

    return Explainer(models_root / MODEL, config=CamserveConfig.load(env={}))


@pytest.fixture(scope="session")
def digit_pixels() -> np.ndarray:
    """48 test images of the default model's task, uint8 [N,64,64,3]."""
    from camserve.default_model.data import make_localisation_dataset

    dataset = make_localisation_dataset(48, seed=7, split="test")
    return (dataset.images * 255.0).round().to(dtype=torch.uint8).permute(0, 2, 3, 1).numpy()
