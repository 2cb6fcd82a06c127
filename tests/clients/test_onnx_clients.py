"""The maps graph without any server (clients/onnx): run by onnxruntime-node (maps.js) and by
onnxruntime-web in a page opened in headless Chromium (check-page.mjs), both give camserve.Explainer's
maps of the same PNG, and the page draws them (screenshot)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from camserve.config import CamserveConfig
from camserve.explainer import Explainer
from camserve.export.maps import MapsOptions, add_maps_graph
from camserve.modeldir import ModelDirectory
from tests.service.service_helpers import png_bytes

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "onnx"
METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "cam")
TARGETS = [-1, 3, -2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="Node.js and npm are not installed (apt-get install nodejs npm)",
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """clients/onnx's packages from its lock file (a no-op when they are installed already)."""
    done = subprocess.run(
        ["npm", "install", "--prefer-offline", "--no-audit", "--no-fund"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return CLIENT / "node_modules"


@pytest.fixture(scope="module")
def maps_dir(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelDirectory:
    """A copy of the default model's directory with a maps graph of six methods."""
    path = tmp_path_factory.mktemp("onnx-clients") / "digits"
    shutil.copytree(models_root / "digits", path)
    return add_maps_graph(path, MapsOptions(methods=METHODS))


@pytest.fixture(scope="module")
def digit_png(digit_pixels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx-png") / "digit.png"
    path.write_bytes(png_bytes(digit_pixels[5]))
    return path


def _assert_maps_equal(result: dict, maps_dir: ModelDirectory, digit_png: Path) -> None:
    want = Explainer(maps_dir, config=CamserveConfig.load(env={})).explain(
        [str(digit_png)], methods=list(METHODS), targets=[TARGETS]
    )
    assert result["model"] == "digits"
    assert result["target_ids"] == want.target_ids[0].tolist()
    np.testing.assert_allclose(result["logits"], want.logits[0], rtol=0, atol=1e-4)
    for method in METHODS:
        got = np.asarray(result["maps"][method], np.float32).reshape(want.maps[method][0].shape)
        np.testing.assert_allclose(got, want.maps[method][0], rtol=0, atol=1e-4, err_msg=method)
        assert got.max() == pytest.approx(1.0)


def test_node_maps_equal_the_explainers(node_modules, maps_dir, digit_png, tmp_path) -> None:
    out = tmp_path / "maps.json"
    argv = ["node", "maps.js", "--model", str(maps_dir.path), "--image", str(digit_png), "--out", str(out)]
    for target in TARGETS:
        argv += ["--target", str(target)]
    done = subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("predicted ")
    raw = json.loads(out.read_text())
    maps: dict[str, list] = {}
    for entry in raw["maps"]:
        assert entry["shape"] == [64, 64] and entry["dtype"] == "float32"
        maps.setdefault(entry["method"], []).append(entry["data"])
        assert entry["target_index"] == len(maps[entry["method"]]) - 1
    _assert_maps_equal({**raw, "maps": maps}, maps_dir, digit_png)


def test_node_refuses_a_model_without_maps_and_a_wrong_size(
    node_modules, models_root, maps_dir, digit_png, tmp_path
) -> None:
    argv = ["node", "maps.js", "--model", str(models_root / "digits"), "--image", str(digit_png)]
    done = subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "has no maps graph: camserve export --from-model DIR --maps" in done.stderr

    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(np.zeros((32, 48, 3), np.uint8)))
    argv = ["node", "maps.js", "--model", str(maps_dir.path), "--image", str(small)]
    done = subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "the image is 48x32; model digits takes 64x64" in done.stderr


@pytest.fixture()
def site(node_modules, maps_dir, digit_png, tmp_path) -> Iterator[str]:
    """The page, its scripts and packages, the model at model/ and the PNG, served on 127.0.0.1."""
    root = tmp_path / "site"
    root.mkdir()
    for name in ("index.html", "page.mjs", "camserve-maps.mjs", "node_modules"):
        (root / name).symlink_to(CLIENT / name)
    (root / "model").symlink_to(maps_dir.path)
    shutil.copy(digit_png, root / "digit.png")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_page_maps_equal_the_explainers(site, maps_dir, digit_png, tmp_path) -> None:
    shot = tmp_path / "page.png"
    url = f"{site}/index.html?image=digit.png&targets={','.join(map(str, TARGETS))}"
    argv = ["node", "check-page.mjs", url, str(shot), "--chromium", str(CHROMIUM), "--timeout", "90"]
    done = subprocess.run(argv, cwd=CLIENT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    _assert_maps_equal(json.loads(done.stdout), maps_dir, digit_png)

    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(np.int32)
    assert pixels.shape[1] == 1280 and pixels.shape[0] >= 720
    # 18 overlays (6 methods x 3 targets): jet's hot red (map near 1, blended 50 % over the digit)
    # and cold blue must both be on the page, which is otherwise white, black and grey.
    hot = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    cold = (pixels[..., 2] > 120) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)
    assert hot.sum() > 18 * 20 and cold.sum() > 18 * 200
