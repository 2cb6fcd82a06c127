"""The end-to-end CLI writes the same .npz with CAMSERVE_KERNELS=triton (the Triton kernels, run by
Triton's interpreter on the CPU) and CAMSERVE_KERNELS=torch (the reference): max abs error <= 1e-5.

Each run is its own process, because Triton reads TRITON_INTERPRET when camserve's kernels are first
imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# every method whose maths go through camserve.kernels (weights, weighted sum, per-pixel sum,
# upsample + normalise), and one that only uses the normaliser
METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam"]


def _explain(model_dir: Path, image: Path, out: Path, backend: str, *extra: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "CAMSERVE_KERNELS": backend, "TRITON_INTERPRET": "1" if backend == "triton" else "0"}
    argv = [sys.executable, "-m", "camserve.cli", "explain", "--model", str(model_dir), "--out", str(out)]
    for method in METHODS:
        argv += ["--method", method]
    argv += ["--target", "-1", "--target", "2", *extra, str(image), str(image)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return dict(np.load(out))


def test_cli_npz_is_the_same_with_triton_and_torch_kernels(tiny_model_dir, png_file, tmp_path):
    for extra in ([], ["--output-size", "13x29"]):  # the input size, and one that is no multiple of 8x8
        torch_npz = _explain(tiny_model_dir.path, png_file, tmp_path / "torch.npz", "torch", *extra)
        triton_npz = _explain(tiny_model_dir.path, png_file, tmp_path / "triton.npz", "triton", *extra)
        assert sorted(triton_npz) == sorted(torch_npz)
        for key in METHODS:
            assert triton_npz[key].shape == torch_npz[key].shape
            assert torch_npz[key].max() == 1.0, key  # real maps, normalised, not all-zero
            np.testing.assert_allclose(triton_npz[key], torch_npz[key], rtol=0, atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(triton_npz["target_ids"], torch_npz["target_ids"])
