"""Targets as data through the Explainer and ``camserve explain --target SPEC``: target scores and
kinds in the result, a model directory exported before target kinds (tests/fixtures/tiny_v1), the
methods that explain class logits only, and the CLI's target parser with its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camserve
from camserve.cli import main
from camserve.cli_flags import parse_target_spec
from camserve.config import CamserveConfig
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.methods.target_kinds import Target
from camserve.modeldir import ModelDirectory
from tests.explainer.tiny_model import INPUT_SIZE

OLD_MODEL = Path(__file__).resolve().parent.parent / "fixtures" / "tiny_v1"
CONFIG = CamserveConfig(runtime=camserve.config.RuntimeConfig(kernels="torch"))


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *INPUT_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def old_explainer() -> camserve.Explainer:
    return camserve.Explainer(ModelDirectory(OLD_MODEL), config=CONFIG)


# -- a model directory exported before target kinds ------------------------------------------------


def test_an_old_model_directory_explains_logits_and_reports_their_scores(
    old_explainer, tiny_model_dir, tmp_path
):
    images = random_images(2)
    result = old_explainer.explain(images, ["gradcam", "scorecam"], targets=[[-1, 2]])
    logits = result.logits
    np.testing.assert_allclose(
        result.target_scores, np.take_along_axis(logits, result.target_ids, 1), rtol=1e-6
    )
    assert result.target_kinds.tolist() == [["logit", "logit"]] * 2
    assert result.target_ids[:, 0].tolist() == logits.argmax(1).tolist()
    # the same network exported by today's exporter gives the same maps and scores
    today = camserve.Explainer(tiny_model_dir, config=CONFIG).explain(images, ["gradcam"], targets=[[-1, 2]])
    np.testing.assert_allclose(today.maps["gradcam"], result.maps["gradcam"], atol=1e-5)
    np.testing.assert_allclose(today.target_scores, result.target_scores, rtol=1e-5)
    path = result.save_npz(tmp_path / "old.npz")
    with np.load(path) as data:
        assert data["target_kinds"].tolist() == [["logit", "logit"]] * 2
        np.testing.assert_array_equal(data["target_scores"], result.target_scores)


def test_an_old_model_directory_refuses_other_kinds_and_says_to_re_export(old_explainer):
    with pytest.raises(
        UnsupportedError, match=r"model 'tiny_v1' was exported before target kinds.*re-export"
    ):
        old_explainer.explain(random_images(1), "gradcam", targets=[[Target("probability", 1)]])


def test_logit_only_methods_are_refused_before_any_graph_runs(old_explainer):
    with pytest.raises(
        UnsupportedError, match=r"'scorecam', 'ablationcam' explain class logits only.*sigmoid"
    ):
        old_explainer.explain(
            random_images(1), ["gradcam", "scorecam", "ablationcam"], targets=[[Target("sigmoid", 1), 0]]
        )


def test_bad_targets_name_the_field(old_explainer):
    with pytest.raises(
        InvalidArgumentError, match=r"^targets\[0\]\[1\]\.kind: a model with a classification"
    ):
        old_explainer.explain(
            random_images(1), "gradcam", targets=[[0, Target("region", 1, box=(0, 0, 4, 4))]]
        )
    with pytest.raises(InvalidArgumentError, match=r"^targets\[1\]\[0\]\.class_id: class 9 is out of range"):
        old_explainer.explain(random_images(2), "gradcam", targets=[[0], [Target("probability", 9)]])


# -- the CLI's target specs ------------------------------------------------------------------------


def test_target_specs_parse_to_ints_and_targets(tmp_path):
    np.save(tmp_path / "c.npy", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    mask[0, 0] = 51
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", np.eye(2, dtype=np.float32) * 0.5)

    assert parse_target_spec("5") == 5 and parse_target_spec("-2") == -2

    def fields(target: object) -> tuple:
        assert isinstance(target, Target)
        return (target.kind, target.class_id, target.box, target.image)

    assert fields(parse_target_spec("probability:5")) == ("probability", 5, None, None)
    assert fields(parse_target_spec("sigmoid:-3")) == ("sigmoid", -3, None, None)
    assert fields(parse_target_spec("region:3:box=10,10,40,40.5")) == ("region", 3, (10, 10, 40, 40.5), None)
    assert fields(parse_target_spec("box:2:box=1,2,3,4")) == ("box", 2, (1, 2, 3, 4), None)
    assert fields(parse_target_spec("predicted_region:-1")) == ("predicted_region", -1, None, None)
    assert fields(parse_target_spec("cosine_image:image=1")) == ("cosine_image", -1, None, 1)
    cosine = parse_target_spec(f"cosine:vector={tmp_path / 'c.npy'}")
    assert isinstance(cosine, Target) and cosine.vector.tolist() == [1.0, 2.0, 3.0]
    png = parse_target_spec(f"region:0:mask={tmp_path / 'm.png'}")
    assert isinstance(png, Target)
    np.testing.assert_array_equal(png.mask, (mask / 255).astype(np.float32))  # weights value / 255
    npy = parse_target_spec(f"region:1:mask={tmp_path / 'm.npy'}")
    assert isinstance(npy, Target) and npy.mask.tolist() == [[0.5, 0.0], [0.0, 0.5]]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("softmax:3", "unknown target kind 'softmax'; expected a class id or one of logit, probability"),
        ("probability:x", "expected a class id (or -k) after probability:, got 'x'"),
        ("region:3", "a region target needs box=... or mask=..."),
        ("logit:3:box=1,2,3,4", "a logit target takes no field, got 'box=1,2,3,4'"),
        ("cosine:mask=m.png", "a cosine target takes vector=..., got 'mask=m.png'"),
        ("region:3:box=1,2,3", "box= needs four numbers x1,y1,x2,y2, got '1,2,3'"),
        ("cosine_image:image=one", "image= needs the index of an image, got 'one'"),
        ("region:1:mask=m.txt", "m.txt: a mask file is .png or .npy"),
        ("region:1:mask=missing.png", "missing.png: No such file or directory"),
        ("cosine:vector=c.txt", "c.txt: a vector file is .npy"),
        ("cosine:vector=missing.npy", "missing.npy: No such file or directory"),
    ],
)
def test_bad_target_specs_name_the_flag(spec, words):
    with pytest.raises(InvalidArgumentError) as info:
        parse_target_spec(spec)
    assert info.value.argument == f"--target {spec}" and words in str(info.value)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_cli_target_errors_are_one_line_with_exit_2(tmp_path, capsys):
    images = tmp_path / "x.npy"
    np.save(images, random_images(1).numpy())
    base = ["explain", "--model", str(OLD_MODEL), "--method", "gradcam", str(images)]
    assert main([*base, "--target", "softmax:1"]) == 2
    assert "error: --target softmax:1: unknown target kind 'softmax'" in _one_line_error(capsys)
    assert main([*base, "--target", "1", "--target", "region:1:box=0,0,4,4"]) == 2
    assert (
        "error: --target region:1:box=0,0,4,4: kind: a model with a classification output takes "
        "targets of kind logit, probability, sigmoid, not 'region'" in _one_line_error(capsys)
    )
    assert main([*base, "--target", "probability:7"]) == 2
    assert "--target probability:7: class_id: class 7 is out of range" in _one_line_error(capsys)
    assert main([*base, "--target", "probability:1"]) == 2
    assert "model 'tiny_v1' was exported before target kinds" in _one_line_error(capsys)
    assert main([*base, "--target", f"cosine:vector={tmp_path / 'none.npy'}"]) == 2
    assert "none.npy: No such file or directory" in _one_line_error(capsys)


def test_cli_plain_class_targets_still_work_and_the_npz_has_scores(tmp_path, capsys):
    images = tmp_path / "x.npy"
    np.save(images, random_images(2).numpy())
    out = tmp_path / "r.npz"
    args = ["explain", "--model", str(OLD_MODEL), "--method", "gradcam", "--target", "-1", "--target", "3"]
    assert main([*args, "--out", str(out), str(images)]) == 0
    with np.load(out) as data:
        assert data["target_ids"][:, 1].tolist() == [3, 3]
        assert data["target_kinds"].tolist() == [["logit", "logit"]] * 2
        np.testing.assert_allclose(
            data["target_scores"], np.take_along_axis(data["logits"], data["target_ids"], 1), rtol=1e-6
        )
    assert "explained: " in capsys.readouterr().out
