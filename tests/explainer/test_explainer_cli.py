"""``camserve explain`` end to end (in-process through camserve.cli.main), and the pictures it draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import camserve
from camserve.cli import main
from camserve.config import CamserveConfig, OverlayStyle
from camserve.visualize import (
    blend_heatmap,
    deprocess_image,
    grid_figure,
    method_slug,
    save_grid,
    save_overlays,
)
from tests.explainer.tiny_model import CLASS_NAMES, INPUT_SIZE


def test_explain_writes_npz_overlays_and_grid(tiny_model_dir, png_file, tmp_path, capsys):
    batch = torch.randn(2, *INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "batch.npy", batch.numpy())
    out, overlays, grid = tmp_path / "result.npz", tmp_path / "overlays", tmp_path / "grid.png"
    status = main(
        [
            "explain",
            "--model", str(tiny_model_dir.path),
            "--method", "gradcam", "--method", "gradcam++", "--method", "scorecam",
            "--target", "-1", "--target", "2",
            "--out", str(out), "--overlay", str(overlays), "--grid", str(grid),
            str(png_file), str(tmp_path / "batch.npy"),
        ]
    )  # fmt: skip
    assert status == 0
    with np.load(out) as data:
        for method in ("gradcam", "gradcam++", "scorecam"):
            assert data[method].shape == (3, 2, 16, 16)
        assert data["logits"].shape == (3, 4)
        assert data["target_ids"][:, 1].tolist() == [2, 2, 2]
    # the .npy tensors were used as they are: the same maps as the Python API on the same tensor
    api = camserve.Explainer(tiny_model_dir, config=CamserveConfig()).explain(batch, ["gradcam"], [[-1, 2]])
    with np.load(out) as data:
        np.testing.assert_allclose(data["gradcam"][1:], api.maps["gradcam"], atol=1e-6)
    names = sorted(p.name for p in overlays.iterdir())
    assert len(names) == 3 * 3 * 2  # images x methods x targets
    assert "square_gradcampp_t1.png" in names and "batch-1_scorecam_t0.png" in names
    with Image.open(grid) as picture:
        assert picture.size == (
            round(100 * (1.9 * 4 + 0.6)),
            round(100 * (1.9 * 3 + 0.4)),
        )  # 4 columns, 3 rows
    printed = capsys.readouterr().out
    assert "square: predicted" in printed and f"wrote {out}" in printed


def test_errors_exit_2_with_one_line_and_leave_no_files(tiny_model_dir, png_file, tmp_path, capsys):
    out = tmp_path / "result.npz"
    common = ["explain", "--model", str(tiny_model_dir.path), "--out", str(out)]
    assert main([*common, "--method", "gradcams", str(png_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camserve explain: error: methods: unknown method 'gradcams'; known: cam,")
    assert "\n" not in err
    assert main([*common, "--target", "7", str(png_file)]) == 2
    assert "targets: class 7 is out of range" in capsys.readouterr().err
    assert main([*common]) == 2
    assert "IMAGES: give at least one image" in capsys.readouterr().err
    assert main([*common, str(tmp_path / "nope.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*common[:-1], str(tmp_path / "missing" / "r.npz"), str(png_file)]) == 2
    assert "out: directory" in capsys.readouterr().err
    assert main([*common, "--token-file", str(png_file), str(png_file)]) == 2  # TLS/token need --server
    assert "--token-file: applies only with --server HOST:PORT" in capsys.readouterr().err
    remote = ["explain", "--server", "127.0.0.1:1", "--out", str(out), str(png_file)]
    assert main([*remote, "--token-file", str(tmp_path / "no-token.txt")]) == 2
    assert "--token-file: no such file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [png_file]


def test_list_methods(bare_model_dir, capsys):
    assert main(["explain", "--model", str(bare_model_dir.path), "--list-methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "gradcam" in listed and "scorecam" in listed
    assert "cam" not in listed and "guidedbackprop" not in listed
    assert "shapleycam" not in listed and "finercam" in listed  # shapleycam needs a GAP -> linear head


def test_fullgrad_through_the_cli(tiny_model_dir, bare_model_dir, png_file, tmp_path, capsys):
    out = tmp_path / "r.npz"
    argv = ["explain", "--model", str(tiny_model_dir.path), "--method", "fullgrad", "--target", "1"]
    assert main([*argv, "--out", str(out), str(png_file)]) == 0
    api = camserve.Explainer(tiny_model_dir, config=CamserveConfig()).explain(
        [str(png_file)], ["fullgrad"], 1
    )
    with np.load(out) as data:
        assert data["fullgrad"].shape == (1, 1, 16, 16)
        np.testing.assert_allclose(data["fullgrad"], api.maps["fullgrad"], atol=1e-6)
    capsys.readouterr()
    assert main(["explain", "--model", str(tiny_model_dir.path), "--list-methods"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "fullgrad"]
    assert "one fullgradient-graph run" in line
    bare = ["explain", "--model", str(bare_model_dir.path), "--method", "fullgrad", str(png_file)]
    assert main(bare) == 2
    assert "exported without a fullgradient graph" in capsys.readouterr().err


def test_flags_become_explain_options(tiny_model_dir, png_file, tmp_path):
    out = tmp_path / "r.npz"
    args = [
        "explain",
        "--model",
        str(tiny_model_dir.path),
        "--output-size",
        "feature",
        "--raw",
        "--out",
        str(out),
    ]
    assert main([*args, "--method", "layercam", str(png_file)]) == 0
    with np.load(out) as data:
        assert data["layercam"].shape == (1, 1, 8, 8)  # feature resolution
        assert data["layercam"].max() != pytest.approx(1.0)  # raw, not min-max normalised


def test_overlays_and_grid_from_the_api(tiny_model_dir, tmp_path):
    explainer = camserve.Explainer(tiny_model_dir, config=CamserveConfig())
    images = torch.randn(2, *INPUT_SIZE, generator=torch.Generator().manual_seed(3))
    result = explainer.explain(images, ["gradcam++", "guidedbackprop"], targets=[[0]])
    paths = save_overlays(result, tmp_path / "over", names=["a/x.png", "b/x.png"])
    # duplicate stems get their index in front
    assert sorted(p.name for p in paths) == [
        "000_x_gradcampp_t0.png",
        "000_x_guidedbackprop_t0.png",
        "001_x_gradcampp_t0.png",
        "001_x_guidedbackprop_t0.png",
    ]
    with Image.open(paths[0]) as picture:
        assert picture.size == (440, 400)
    grid = save_grid(result, tmp_path / "grid.png")
    with Image.open(grid) as picture:
        assert picture.size == (round(100 * (1.9 * 3 + 0.6)), round(100 * (1.9 * 2 + 0.4)))
    assert method_slug("smoothgradcam++") == "smoothgradcampp"
    assert result.class_name(int(result.target_ids[0, 0])) == CLASS_NAMES[0]


def test_smoothing_flags_become_explain_options(tiny_model_dir, png_file, tmp_path):
    out = tmp_path / "r.npz"
    argv = ["explain", "--model", str(tiny_model_dir.path), "--method", "gradcam", "--out", str(out)]
    assert main([*argv, "--eigen-smooth", "--aug-smooth", str(png_file)]) == 0
    config = CamserveConfig().replace(explain={"eigen_smooth": True, "aug_smooth": True})
    explainer = camserve.Explainer(tiny_model_dir, config=config)
    expected = explainer.explain([str(png_file)], ["gradcam"]).maps["gradcam"]
    plain = camserve.Explainer(tiny_model_dir, config=CamserveConfig()).explain([str(png_file)], ["gradcam"])
    with np.load(out) as data:
        np.testing.assert_allclose(data["gradcam"], expected, atol=1e-6)
        assert np.abs(data["gradcam"] - plain.maps["gradcam"]).max() > 0.05


def test_overlay_style_and_guided_evidence_in_the_grid(tiny_model_dir, tmp_path, capsys):
    explainer = camserve.Explainer(tiny_model_dir, config=CamserveConfig())
    images = torch.randn(1, *INPUT_SIZE, generator=torch.Generator().manual_seed(3))
    result = explainer.explain(images, ["gradcam", "guidedbackprop"], targets=[[0]])
    style = OverlayStyle("viridis", 0.3)
    figure = grid_figure(result, style=style)
    _, heat_axes, guided_axes = figure.axes[:3]
    drawn = heat_axes.get_images()[0].get_array()
    pixels = result.pixels()[0]
    np.testing.assert_allclose(drawn, blend_heatmap(pixels, result.maps["gradcam"][0, 0], True, style))
    # the guided column is the colour evidence drawn as pytorch-grad-cam's deprocess_image does
    rgb = result.rgb["guidedbackprop"][0, 0]
    np.testing.assert_array_equal(guided_axes.get_images()[0].get_array(), deprocess_image(rgb))

    # by hand: a white map in "gray" at image weight 0.25 over a 0.2 grey image: 0.25 * 0.2 + 0.75
    flat = blend_heatmap(np.full((2, 2, 3), 0.2), np.ones((2, 2)), True, OverlayStyle("gray", 0.25))
    np.testing.assert_allclose(flat, 0.8)

    argv = ["explain", "--model", str(tiny_model_dir.path), "--grid", str(tmp_path / "g.png")]
    assert main([*argv, "--colormap", "nope", str(tmp_path / "x.png")]) == 2
    assert "--colormap: unknown colour map 'nope'" in capsys.readouterr().err
    assert main([*argv, "--image-weight", "1.5", str(tmp_path / "x.png")]) == 2
    assert "--image-weight: must be finite and in [0, 1], got 1.5" in capsys.readouterr().err


def test_deprocess_image_equals_pytorch_grad_cams():
    anchor = pytest.importorskip("pytorch_grad_cam.utils.image")
    rgb = np.random.default_rng(0).standard_normal((3, 8, 6)).astype(np.float32) * 1e-3
    np.testing.assert_array_equal(deprocess_image(rgb), anchor.deprocess_image(rgb.transpose(1, 2, 0)))
