"""default_model_dir and `camserve default-model build`: export on first use, reuse, rebuild, races."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import camserve.default_model
from camserve.cli import main
from camserve.config import RuntimeConfig
from camserve.default_model import GRAPHS, GRAPHS_VERSION, WEIGHTS_PATH, default_model_dir, load_default_model
from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import TARGET_LAYER, normalize
from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.modeldir import ModelDirectory, sha256_file
from tests.reference.autograd_cam import autograd_explain


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`camserve default-model build` into a fresh cache named by the environment, as users run it."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAMSERVE_RUNTIME_CACHE_DIR", str(cache))
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            assert main(["default-model", "build"]) == 0
    printed = Path(output.getvalue().strip())
    assert printed.parent == cache
    return printed


def test_first_use_exports_the_committed_weights(exported: Path) -> None:
    assert exported.name == f"default-model-{sha256_file(WEIGHTS_PATH)[:12]}-g{GRAPHS_VERSION}"
    assert [p.name for p in exported.parent.iterdir()] == [exported.name], "staging folders left behind"
    manifest = ModelDirectory(exported).manifest
    assert manifest.name == "digits" and manifest.architecture == "camserve-digits"
    assert manifest.target_layer == "features"
    assert manifest.input_size == [3, 64, 64]
    assert manifest.activation_shape == [64, 16, 16]
    assert manifest.class_names == [str(d) for d in range(10)]
    assert manifest.cam_weights is not None  # the head is GAP -> linear
    assert sorted(manifest.graphs) == sorted(GRAPHS)  # every graph, fullgradient included
    weights = np.load(exported / manifest.cam_weights.file)  # the keys camserve.export writes
    model = load_default_model()
    torch.testing.assert_close(torch.from_numpy(weights["weight"]), model.fc.weight.detach())
    torch.testing.assert_close(torch.from_numpy(weights["bias"]), model.fc.bias.detach())


def test_later_uses_reuse_the_cached_directory(exported: Path) -> None:
    stamp = (exported / "manifest.json").stat().st_mtime_ns
    assert default_model_dir(str(exported.parent)) == exported
    assert (exported / "manifest.json").stat().st_mtime_ns == stamp


def test_a_cache_without_a_graph_is_exported_again(exported: Path, tmp_path: Path, monkeypatch) -> None:
    """A copy written by an older camserve (no fullgradient graph) is replaced, not used."""
    path = tmp_path / exported.name
    shutil.copytree(exported, path)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["graphs"]["fullgradient"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "fullgradient.onnx").unlink()
    ModelDirectory(path)  # a valid directory, only without the graph
    exports = []

    def export(out: Path, weights: Path | None = None) -> Path:  # the export, without minutes of tracing
        exports.append(out)
        shutil.copytree(exported, out)
        return out

    monkeypatch.setattr(camserve.default_model, "export_default_model", export)
    assert default_model_dir(str(tmp_path)) == path
    assert len(exports) == 1
    assert "fullgradient" in ModelDirectory(path).manifest.graphs
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_damaged_cache_is_exported_again(exported: Path, tmp_path: Path) -> None:
    path = tmp_path / exported.name
    shutil.copytree(exported, path)
    graph = ModelDirectory(path).graph_path("explain")
    graph.write_bytes(graph.read_bytes()[:-10])
    assert default_model_dir(str(tmp_path)) == path
    ModelDirectory(path)  # checksums pass again
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_explain_graph_matches_torch_autograd(exported: Path) -> None:
    from camserve.runtime import OnnxGraphRunner

    ds = make_localisation_dataset(3, seed=4, split="test")
    runner = OnnxGraphRunner(ModelDirectory(exported), RuntimeConfig(device="cpu"))
    outputs = runner.explain(normalize(ds.images), ds.labels[:, None])
    _, activations, gradients, _ = autograd_explain(
        load_default_model(), TARGET_LAYER, normalize(ds.images), ds.labels[:, None]
    )
    torch.testing.assert_close(outputs.activations, activations, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs.gradients, gradients, rtol=1e-4, atol=1e-6)
    assert torch.equal(outputs.target_ids, ds.labels[:, None])


def test_two_processes_building_at_once_agree(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        paths = pool.map(default_model_dir, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    ModelDirectory(paths[0])
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


def test_cli_build_refuses_an_existing_out_without_force(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamp = (exported / "manifest.json").stat().st_mtime_ns
    assert main(["default-model", "build", "--out", str(exported)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (exported / "manifest.json").stat().st_mtime_ns == stamp


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="weights"):
        default_model_dir(str(tmp_path), weights=tmp_path / "nope.pt")


def test_retrain_keeps_weights_and_record_under_their_sha(tmp_path: Path) -> None:
    from camserve.commands.default_model import _retrain
    from camserve.default_model.train import TrainingPlan

    plan = TrainingPlan(train_images=64, epochs=1, batch_size=32, test_images=10)
    weights = _retrain(tmp_path, plan)
    sha = sha256_file(weights)
    assert weights == tmp_path / f"retrained-{sha[:12]}" / "weights.pt"
    record = json.loads((weights.parent / "training.json").read_text())
    assert record["weights_sha256"] == sha and record["steps"] == 2
    load_default_model(weights)  # a loadable DigitCamNet state_dict
    assert _retrain(tmp_path, plan) == weights  # same plan, same bits: the folder is reused
    assert sorted(p.name for p in tmp_path.iterdir()) == [weights.parent.name]


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_weights_that_are_not_a_digitcamnet_are_a_clear_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save({"x": torch.zeros(2)}, path)  # a real checkpoint of something else
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidArgumentError, match="not a DigitCamNet state_dict") as info:
        load_default_model(path)
    assert info.value.argument == "weights"
