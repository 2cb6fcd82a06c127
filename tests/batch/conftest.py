"""One generated dataset, one default-model Explainer, one local-engine run and the Explainer's own
maps for the same images, shared by every batch test."""

from __future__ import annotations

from pathlib import Path

import pytest

from camserve.batch.run import run_batch
from camserve.result import ExplainResult
from tests.batch.batch_data import METHODS, make_dataset, make_job


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("batch") / "images"
    root.mkdir()
    return root, make_dataset(root)


@pytest.fixture(scope="session")
def explainer():
    from camserve import Explainer

    return Explainer()


@pytest.fixture(scope="session")
def local_out(tmp_path_factory, dataset, explainer) -> Path:
    root, _ = dataset
    out = tmp_path_factory.mktemp("batch") / "local"
    run_batch(make_job(root, out), progress=False, explainer=explainer)
    return out


@pytest.fixture(scope="session")
def reference(dataset, explainer) -> ExplainResult:
    """``Explainer.explain`` on the good images, in sorted id order."""
    root, ids = dataset
    return explainer.explain([str(root / image_id) for image_id in ids], methods=list(METHODS))
