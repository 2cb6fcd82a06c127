"""The Node.js client (clients/node) installs from its lock file and explains an image against a live
server; its JSON maps equal the in-process Explainer's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.service.service_helpers import png_bytes

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="Node.js and npm are not installed (the Node client needs them; apt-get install nodejs npm)",
)


def test_node_client_explains_an_image_like_the_in_process_explainer(
    server, explainer, digit_pixels, tmp_path
):
    install = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stderr
    image, out = tmp_path / "digit.png", tmp_path / "map.json"
    image.write_bytes(png_bytes(digit_pixels[4]))
    argv = ["node", "explain.js", "--server", server.address, "--image", str(image), "--out", str(out)]
    argv += ["--method", "gradcam", "--method", "gradcam++", "--target", "-1", "--target", "3"]
    done = subprocess.run(argv, cwd=NODE_CLIENT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "predicted" in done.stdout

    result = json.loads(out.read_text())
    expected = explainer.explain([str(image)], methods=["gradcam", "gradcam++"], targets=[[-1, 3]])
    assert result["model"] == "digits"
    assert result["target_ids"] == expected.target_ids[0].tolist()
    assert [p["class_id"] for p in result["predictions"]] == [p.class_id for p in expected.predictions[0]]
    assert len(result["maps"]) == 4
    for entry in result["maps"]:
        assert entry["shape"] == [64, 64] and entry["dtype"] == "float32"
        values = np.asarray(entry["data"], np.float32).reshape(entry["shape"])
        reference = expected.maps[entry["method"]][0, entry["target_index"]]
        np.testing.assert_allclose(values, reference, rtol=0, atol=1e-6, err_msg=entry["method"])


def test_node_client_reports_a_bad_model_with_its_status(server, digit_pixels, tmp_path):
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digit_pixels[0]))
    argv = [
        "node",
        "explain.js",
        "--server",
        server.address,
        "--image",
        str(image),
        "--out",
        str(tmp_path / "x.json"),
    ]
    done = subprocess.run(
        argv + ["--model", "nope"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "NOT_FOUND: model 'nope' is not served here" in done.stderr


def test_node_client_sends_typed_targets_and_writes_their_kinds_and_scores(
    server, explainer, digit_pixels, tmp_path
):
    image, out = tmp_path / "digit.png", tmp_path / "map.json"
    image.write_bytes(png_bytes(digit_pixels[5]))
    spec = '{"kind": "TARGET_KIND_LOGIT", "class_id": 3}'
    argv = ["node", "explain.js", "--server", server.address, "--image", str(image), "--out", str(out)]
    done = subprocess.run(
        [*argv, "--target-spec", spec, "--target-spec", "{}"],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    expected = explainer.explain([str(image)], methods=["gradcam"], targets=[[3, -1]])
    assert result["target_ids"] == expected.target_ids[0].tolist()
    assert result["target_kinds"] == ["TARGET_KIND_LOGIT", "TARGET_KIND_LOGIT"]
    np.testing.assert_allclose(result["target_scores"], expected.target_scores[0], rtol=1e-5)
    for entry in result["maps"]:
        values = np.asarray(entry["data"], np.float32).reshape(entry["shape"])
        reference = expected.maps["gradcam"][0, entry["target_index"]]
        np.testing.assert_allclose(values, reference, rtol=0, atol=1e-6)
    bad = subprocess.run(
        [*argv, "--target-spec", '{"kind": "TARGET_KIND_REGION", "class_id": 1}'],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert (
        "INVALID_ARGUMENT: images[0].target_specs[0].kind: a model with a classification output" in bad.stderr
    )
