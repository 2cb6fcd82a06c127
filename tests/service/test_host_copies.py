"""Results leave the device once per batch: every tensor of a batch (logits, target ids, the maps of
every method) goes through one ``camserve.hostcopy.to_host`` call, counted here by wrapping it; the
codecs then only read host arrays. The answers are the in-process Explainer's, bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camserve import hostcopy
from camserve.config import CamserveConfig
from camserve.explainer import Explainer
from camserve.service.batch_runner import ExplainBatchRunner, ImageWork, batch_key
from tests.service.service_helpers import MODEL


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The keys of every to_host call, in order."""
    calls: list[list[Any]] = []
    real = hostcopy.to_host

    def counting(tensors: Mapping[Any, torch.Tensor], streams: Any = None) -> dict[Any, torch.Tensor]:
        calls.append(list(tensors))
        return real(tensors, streams)

    monkeypatch.setattr(hostcopy, "to_host", counting)
    return calls


def test_cpu_tensors_are_returned_without_a_copy_in_their_order() -> None:
    a, b = torch.rand(2, 3), torch.arange(4)
    host = hostcopy.to_host({"b": b, "a": a})
    assert list(host) == ["b", "a"]
    assert host["a"].data_ptr() == a.data_ptr() and host["b"].data_ptr() == b.data_ptr()
    assert hostcopy.to_host({}) == {}


def test_a_batch_copies_to_the_host_once(
    models_root: Path, digit_pixels: np.ndarray, explainer: Explainer, copies: list[list[Any]]
) -> None:
    own = Explainer(models_root / MODEL, config=CamserveConfig.load(env={}))  # the batch runner wraps it
    run = ExplainBatchRunner(own)
    images = own.preprocess(list(digit_pixels[:3])).numpy()
    works = [
        ImageWork(images[0], (-1, -2), ("gradcam", "layercam")),
        ImageWork(images[1], (-1, -2), ("gradcam++",)),
        ImageWork(images[2], (-1, -2), ("gradcam", "gradcam++")),
    ]
    options = own.config.explain
    results = run(batch_key(works[0], options), works, lambda: False)
    assert len(copies) == 1, copies  # one device-to-host copy call for the whole batch
    maps_copied = sorted(key[1] for key in copies[0] if key[0] == "maps")
    assert maps_copied == ["gradcam", "gradcam++", "layercam"]  # every method once, not per image
    assert {key[0] for key in copies[0]} == {"logits", "target_ids", "target_scores", "images", "maps"}
    for work, result in zip(works, results, strict=True):
        assert set(result.maps) == set(work.methods)
        assert all(isinstance(m, np.ndarray) and m.dtype == np.float32 for m in result.maps.values())
    # the same numbers as the in-process API, which also copies once per call
    copies.clear()
    expected = explainer.explain(list(digit_pixels[:3]), ["gradcam", "gradcam++", "layercam"], [[-1, -2]])
    assert len(copies) == 1
    for n, (work, result) in enumerate(zip(works, results, strict=True)):
        for method in work.methods:
            np.testing.assert_array_equal(result.maps[method], expected.maps[method][n])
        np.testing.assert_array_equal(result.logits, expected.logits[n])
        np.testing.assert_array_equal(result.target_ids, expected.target_ids[n])
