"""camserve.kernels: backend choice, argument checks, and Triton's interpreter switch.

Tests that need a process whose environment and imports are known run in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from camserve import kernels
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.kernels import reference
from tests.kernels.kernel_cases import cam_inputs

REPO = Path(__file__).resolve().parents[2]


def _run_python(script: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` from a file (Triton reads a @jit function's source) without TRITON_INTERPRET."""
    path = directory / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_resolve_backend() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernels.resolve_backend("auto", cpu) == "torch"
    assert kernels.resolve_backend("auto", cuda) == ("triton" if kernels.triton_installed() else "torch")
    assert kernels.resolve_backend("torch", cuda) == "torch"
    assert kernels.resolve_backend("triton", cpu) == "triton"
    with pytest.raises(InvalidArgumentError, match="runtime.kernels: 'cuda' is not one of"):
        kernels.resolve_backend("cuda", cpu)


def test_auto_on_cpu_is_the_reference() -> None:
    a, g = cam_inputs(2, 2, 5, 7, 7)
    assert torch.equal(
        kernels.channel_weights(a, g, "gradcam++"), reference.channel_weights(a, g, "gradcam++")
    )
    maps = kernels.gradient_weighted_cam(a, g, "xgradcam")
    assert torch.equal(maps, reference.gradient_weighted_cam(a, g, "xgradcam"))
    assert torch.equal(kernels.upsample_normalize(maps, (9, 9)), reference.upsample_normalize(maps, (9, 9)))


def _bad_calls(backend: str):
    a, g = cam_inputs(1, 2, 3, 4, 4)
    w = torch.rand(1, 2, 3)
    maps = torch.rand(1, 2, 4, 4)
    return [
        ("activations", lambda: kernels.channel_weights(a[0], g, "gradcam", backend=backend)),
        ("activations", lambda: kernels.weighted_sum_relu(a.long(), w, backend=backend)),
        ("activations", lambda: kernels.elementwise_sum_relu([1.0], g, True, backend=backend)),
        ("activations", lambda: kernels.channel_weights(a[..., :0], g[..., :0], "gradcam", backend=backend)),
        ("gradients", lambda: kernels.channel_weights(a, g[:, :, :2], "gradcam", backend=backend)),
        ("gradients", lambda: kernels.elementwise_sum_relu(a, g.double(), False, backend=backend)),
        ("gradients", lambda: kernels.gradient_weighted_cam(a, g.to("meta"), "gradcam", backend=backend)),
        ("method", lambda: kernels.channel_weights(a, g, "scorecam", backend=backend)),
        ("method", lambda: kernels.gradient_weighted_cam(a, g, "GradCAM", backend=backend)),
        ("methods", lambda: kernels.channel_weights_for_methods(a, g, "gradcam", backend=backend)),
        ("methods", lambda: kernels.channel_weights_for_methods(a, g, [], backend=backend)),
        ("weights", lambda: kernels.weighted_sum_relu(a, w[:, :, :2], backend=backend)),
        ("weights", lambda: kernels.weighted_sum_relu(a, w[0], backend=backend)),
        ("maps", lambda: kernels.upsample_normalize(maps[0], (8, 8), backend=backend)),
        ("size", lambda: kernels.upsample_normalize(maps, (8, 0), backend=backend)),
        ("size", lambda: kernels.upsample_normalize(maps, (8.0, 8), backend=backend)),
        ("size", lambda: kernels.upsample_normalize(maps, 8, backend=backend)),
        ("eps", lambda: kernels.upsample_normalize(maps, None, eps=-1.0, backend=backend)),
        ("eps", lambda: kernels.upsample_normalize(maps, None, eps=float("nan"), backend=backend)),
        ("to_uint8", lambda: kernels.upsample_normalize(maps, None, False, to_uint8=True, backend=backend)),
        ("runtime.kernels", lambda: kernels.upsample_normalize(maps, None, backend="cuda")),
    ]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_arguments_raise_invalid_argument_naming_them(backend: str) -> None:
    for argument, call in _bad_calls(backend):
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert info.value.argument == argument, (argument, str(info.value))


def test_float64_is_unsupported_by_triton_only() -> None:
    a, g = cam_inputs(1, 1, 3, 4, 4)
    a, g = a.double(), g.double()
    expected = reference.gradient_weighted_cam(a, g, "gradcam")
    assert torch.equal(kernels.gradient_weighted_cam(a, g, "gradcam", backend="torch"), expected)
    with pytest.raises(UnsupportedError, match="float64 is not supported by the triton kernels"):
        kernels.gradient_weighted_cam(a, g, "gradcam", backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend: str) -> None:
    a, g = cam_inputs(0, 2, 3, 4, 4)
    assert kernels.channel_weights(a, g, "gradcam", backend=backend).shape == (0, 2, 3)
    assert kernels.gradient_weighted_cam(a, g, "gradcam++", backend=backend).shape == (0, 2, 4, 4)
    assert kernels.elementwise_sum_relu(a, g, True, backend=backend).shape == (0, 2, 4, 4)
    assert kernels.upsample_normalize(torch.zeros(0, 2, 4, 4), (8, 8), backend=backend).shape == (0, 2, 8, 8)


def test_importing_kernels_does_not_import_triton_and_cpu_triton_needs_the_interpreter(
    tmp_path: Path,
) -> None:
    result = _run_python(
        """
        import sys
        import torch
        import camserve.kernels as kernels
        from camserve.errors import UnsupportedError

        maps = kernels.upsample_normalize(torch.rand(1, 1, 3, 3), (8, 8))  # auto on CPU: torch
        assert "triton" not in sys.modules, "importing or using camserve.kernels imported triton"
        try:
            kernels.upsample_normalize(torch.rand(1, 1, 3, 3), (8, 8), backend="triton")
        except UnsupportedError as exc:
            print(exc)
        else:
            raise AssertionError("triton on CPU without TRITON_INTERPRET did not raise")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "set TRITON_INTERPRET=1" in result.stdout


def test_interpreter_works_when_triton_was_imported_first(tmp_path: Path) -> None:
    # Another library imported triton (and decorated kernels) before the variable was set: what
    # matters is that camserve's kernel module is imported after it.
    result = _run_python(
        """
        import os
        import torch
        import triton
        import triton.language as tl

        @triton.jit
        def other_library_kernel(x_ptr):
            tl.store(x_ptr, 1.0)

        os.environ["TRITON_INTERPRET"] = "1"
        from camserve import kernels
        from camserve.kernels import reference

        torch.manual_seed(0)
        a, g = torch.rand(2, 5, 7, 7), torch.randn(2, 1, 5, 7, 7)
        out = kernels.gradient_weighted_cam(a, g, "gradcam", backend="triton")
        err = (out - reference.gradient_weighted_cam(a, g, "gradcam")).abs().max().item()
        assert err <= 1e-5, err
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
