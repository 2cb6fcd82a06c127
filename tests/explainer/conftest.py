"""A tiny classifier exported once per session (real ONNX graphs, every graph), and a copy of its
directory without the guided and fullgradient graphs and the CAM weights (a model whose head is not GAP ->
linear)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from camserve.export import GRAPHS, export_model
from camserve.modeldir import MANIFEST_NAME, ModelDirectory
from tests.explainer.tiny_model import CLASS_NAMES, INPUT_SIZE, MEAN, STD, tiny_net


@pytest.fixture(scope="session")
def tiny_model() -> nn.Module:
    return tiny_net()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> ModelDirectory:
    return export_model(
        tiny_model,
        "3",
        INPUT_SIZE,
        tmp_path_factory.mktemp("models") / "tiny",
        name="tiny",
        architecture="module:tests.explainer.tiny_model:tiny_net",
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        graphs=GRAPHS,
        verify=False,
    )


@pytest.fixture(scope="session")
def bare_model_dir(tmp_path_factory, tiny_model_dir) -> ModelDirectory:
    """The tiny model without the guided and fullgradient graphs and without CAM weights."""
    path = tmp_path_factory.mktemp("models") / "bare"
    shutil.copytree(tiny_model_dir.path, path)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    del manifest["graphs"]["guided"]
    del manifest["graphs"]["fullgradient"]
    manifest["cam_weights"] = None
    manifest["name"] = "bare"
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    return ModelDirectory(path)


@pytest.fixture()
def png_file(tmp_path) -> Path:
    """A 24x20 RGB PNG: red square top-left on a grey background."""
    from PIL import Image

    pixels = torch.full((20, 24, 3), 128, dtype=torch.uint8)
    pixels[2:8, 3:9] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    path = tmp_path / "square.png"
    Image.fromarray(pixels.numpy()).save(path)
    return path
