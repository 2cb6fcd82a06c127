"""Bad input to `camserve export`: one clear message, exit status 2, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch

from camserve.cli import main
from camserve.errors import ExportError, NotFoundError
from camserve.export import export_model
from tests.export.nets import ResidualNet, TinyGapNet

KW = dict(name="t", architecture="test", mean=[0.0] * 3, std=[1.0] * 3)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["export", *argv])
    return code, capsys.readouterr().err


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_unknown_architecture(capsys, tmp_path) -> None:
    code, err = _run(capsys, "--arch", "resnet77", "--random-weights", "--out", str(tmp_path / "m"))
    assert code == 2
    assert "unknown architecture 'resnet77'" in err and "resnet50" in err
    assert _leftovers(tmp_path) == []


def test_layer_not_found_lists_nearest_names(capsys, tmp_path) -> None:
    code, err = _run(
        capsys,
        "--arch",
        "resnet18",
        "--random-weights",
        "--layer",
        "layer5",
        "--input-size",
        "3x32x32",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 2
    assert "layer 'layer5' not found" in err and "layer4" in err
    assert _leftovers(tmp_path) == []


def test_weights_missing_unreadable_and_mismatched(capsys, tmp_path) -> None:
    out = str(tmp_path / "m")
    code, err = _run(capsys, "--arch", "resnet18", "--weights", str(tmp_path / "nope.pth"), "--out", out)
    assert code == 2 and "does not exist" in err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    code, err = _run(capsys, "--arch", "resnet18", "--weights", str(garbage), "--out", out)
    assert code == 2 and "not a readable PyTorch weights file" in err
    state = TinyGapNet().state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["features.0.weight"] = torch.zeros(1, 1, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    code, err = _run(
        capsys,
        "--module",
        "tests.export.nets:build_tiny",
        "--layer",
        "features",
        "--weights",
        str(bad),
        "--input-size",
        "3x16x16",
        "--out",
        out,
    )
    assert code == 2
    assert "1 missing keys (first: fc.bias)" in err
    assert "1 unexpected keys (first: extra.weight)" in err
    assert "features.0.weight (1, 1, 1, 1) vs (6, 8, 3, 3)" in err
    assert sorted(_leftovers(tmp_path)) == ["bad.pth", "garbage.pth"]


def test_input_size_the_model_cannot_take(capsys, tmp_path) -> None:
    args = ["--module", "tests.export.nets:build_tiny", "--layer", "features", "--random-weights"]
    args += ["--input-size", "1x16x16", "--out", str(tmp_path / "m")]
    # ImageNet's mean and std are for 3 channels: a 1-channel input needs its own, one per channel
    code, err = _run(capsys, *args)
    assert (
        code == 2
        and err.strip()
        == "camserve export: error: --mean: required for 1 input channels (the default is ImageNet's, for 3)"
    )
    code, err = _run(capsys, *args, "--mean", "0.5,0.5", "--std", "0.5")
    assert (
        code == 2
        and err.strip() == "camserve export: error: --mean: expected 1 values (one per input channel), got 2"
    )
    code, err = _run(capsys, *args, "--mean", "0.5", "--std", "0.5")  # the 3-channel model refuses it
    assert code == 2 and "fails on an input of size 1x16x16" in err
    # the ViT position embedding fixes the input size: a different size fails inside the model
    with pytest.raises(ExportError, match="fails on an input of size 3x48x48"):
        from camserve.export.architectures import build_torchvision

        vit = build_torchvision("vit_b_16", (3, 32, 32))
        export_model(vit, "encoder.layers.encoder_layer_10", (3, 48, 48), tmp_path / "v", **KW)
    assert _leftovers(tmp_path) == []


def test_output_exists_is_refused_unless_force(capsys, tmp_path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [
        "--module",
        "tests.export.nets:build_tiny",
        "--layer",
        "features",
        "--random-weights",
        "--input-size",
        "3x16x16",
        "--out",
        str(out),
    ]
    code, err = _run(capsys, *args)
    assert code == 2 and "exists; pass --force" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _ = _run(capsys, *args, "--force")
    assert code == 0
    assert not (out / "keep.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"] == "module:tests.export.nets:build_tiny"
    assert manifest["target_layer"] == "features" and manifest["activation_shape"] == [6, 8, 8]
    assert _leftovers(tmp_path) == ["m"]  # no staging or old directories left behind


def test_layer_bypassed_with_no_block_around_it_is_refused(tmp_path) -> None:
    # the skip connection is in the model's own forward: no module around 'inner' takes a cut
    with pytest.raises(ExportError, match="'inner' is not a cut of the network .* no module around it"):
        export_model(ResidualNet(), "inner", (3, 8, 8), tmp_path / "m", **KW)
    with pytest.raises(ExportError, match="output of layer 'unused' does not reach the model's output"):
        export_model(ResidualNet(), "unused", (3, 8, 8), tmp_path / "m", **KW)
    assert _leftovers(tmp_path) == []


def test_unknown_module_path(capsys, tmp_path) -> None:
    code, err = _run(
        capsys,
        "--module",
        "tests.export.nets:nope",
        "--layer",
        "x",
        "--random-weights",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 2 and "has no attribute 'nope'" in err
    with pytest.raises(NotFoundError, match="cannot import"):
        from camserve.export import build_from_import_path

        build_from_import_path("no_such_package.nets:build")


def test_export_does_not_modify_the_model(tmp_path) -> None:
    model = TinyGapNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, "features", (3, 16, 16), tmp_path / "m", graphs=("explain",), **KW)
    assert model.training  # still in training mode: export worked on a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks and not model.features._forward_hooks
