"""The GPU path (camserve.runtime, camserve.doctor), as far as a CPU machine can check it: device
parsing, the install checks and their messages, the CUDA provider's options and the loaded-provider
assertion (with a stand-in session), and the warm-up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from camserve import doctor, runtime
from camserve.config import CamserveConfig, RuntimeConfig
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.modeldir import ModelDirectory

GOOD_STACK: dict[str, Any] = {
    "torch": "2.14.1+cu130",
    "torch CUDA": "13.0",
    "CUDA devices": 1,
    "NVIDIA driver": "580.65.06",
    "driver CUDA": "13.0",
    "onnxruntime (module)": "1.31.1",
    "onnxruntime (CPU wheel)": None,
    "onnxruntime-gpu (wheel)": "1.31.1",
    "onnxruntime CUDA": "13.0",
    "onnxruntime providers": "TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider",
    "triton": "3.8.0",
    "C compiler": "/usr/bin/gcc",
    "Python.h": "/usr/local/include/python3.11/Python.h",
}


@pytest.fixture(scope="module")
def model_dir() -> ModelDirectory:
    from camserve.default_model import default_model_dir

    return ModelDirectory(default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir))


def test_device_strings() -> None:
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "cuda:0 "):
        with pytest.raises(InvalidArgumentError, match="runtime.device"):
            runtime.resolve_device(bad)
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UnsupportedError, match=r"runtime.device 'cuda:1'.*torch .*CUDA"):
            runtime.resolve_device("cuda:1")


def test_install_problems_are_named() -> None:
    assert doctor.gpu_stack_problems(GOOD_STACK) == []
    shadowed = {
        **GOOD_STACK,
        "onnxruntime (CPU wheel)": "1.32.0",
        "onnxruntime CUDA": None,
        "onnxruntime providers": "AzureExecutionProvider, CPUExecutionProvider",
    }
    (problem,) = doctor.gpu_stack_problems(shadowed)
    assert "both onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in problem
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu==1.31.1'"
    assert problem.endswith(fix)
    old_gpu_wheel = {"onnxruntime-gpu (wheel)": "1.22.0", "onnxruntime CUDA": "12.4"}
    mismatch = doctor.gpu_stack_problems({**GOOD_STACK, **old_gpu_wheel})
    assert mismatch == [
        "CUDA major versions differ: torch 2.14.1+cu130 is built for CUDA 13.0, onnxruntime-gpu 1.22.0 "
        "for CUDA 12.4: install the builds of one CUDA major version (the two load one process's CUDA "
        "libraries)"
    ]
    no_gpu = {"CUDA devices": 0, "NVIDIA driver": None, "driver CUDA": None}
    cpu_only = doctor.gpu_stack_problems({**GOOD_STACK, "onnxruntime-gpu (wheel)": None, **no_gpu})
    assert cpu_only == [
        "onnxruntime-gpu is not installed: camserve installs it on Linux x86_64 (PyPI has no CUDA wheel "
        "for other platforms); pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.28,<1.32'",
        "no CUDA device is visible to torch (no NVIDIA driver found; CUDA_VISIBLE_DEVICES)",
    ]


def test_a_driver_below_the_cuda_floor_is_named() -> None:
    # R570 supports CUDA 12.8: torch's CUDA 13 sees no device, and the check says why
    old = {**GOOD_STACK, "NVIDIA driver": "570.172.08", "driver CUDA": "12.8", "CUDA devices": 0}
    assert doctor.gpu_stack_problems(old) == [
        "the NVIDIA driver 570.172.08 supports CUDA up to 12.8; torch 2.14.1+cu130 needs CUDA 13.0, "
        "driver R580 or newer: upgrade the driver"
    ]
    # either probe alone is enough: libcuda's version without /proc, or the branch without libcuda
    assert len(doctor.gpu_stack_problems({**old, "NVIDIA driver": None})) == 1
    assert len(doctor.gpu_stack_problems({**old, "driver CUDA": None})) == 1
    assert doctor.gpu_stack_problems({**GOOD_STACK, "NVIDIA driver": "590.1", "driver CUDA": "13.1"}) == []
    # a CUDA 12 torch has the R525 floor
    cu12 = {**GOOD_STACK, "torch": "2.14.1+cu128", "torch CUDA": "12.8", "onnxruntime CUDA": "12.4"}
    assert doctor.gpu_stack_problems({**cu12, "NVIDIA driver": "570.1", "driver CUDA": "12.8"}) == []
    (problem,) = doctor.gpu_stack_problems({**cu12, "NVIDIA driver": "470.2", "driver CUDA": "11.4"})
    assert "driver R525 or newer" in problem


def test_triton_without_a_compiler_or_headers_is_named() -> None:
    (problem,) = doctor.gpu_stack_problems({**GOOD_STACK, "C compiler": None})
    assert problem.startswith("triton 3.8.0 builds its kernel launcher at first use and lacks a C compiler:")
    (problem,) = doctor.gpu_stack_problems({**GOOD_STACK, "C compiler": None, "Python.h": None})
    assert "lacks a C compiler and Python.h: install gcc and the Python headers" in problem
    # without triton the torch kernels need neither
    no_build = {"C compiler": None, "Python.h": None}
    assert doctor.gpu_stack_problems({**GOOD_STACK, "triton": None, **no_build}) == []


def test_probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("CC", "/opt/cc/bin/mycc")
    assert doctor.c_compiler() == "/opt/cc/bin/mycc"
    monkeypatch.delenv("CC")
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "clang" else None)
    assert doctor.c_compiler() == "/usr/bin/clang"
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    assert doctor.c_compiler() is None
    include = tmp_path / "include"
    include.mkdir()
    monkeypatch.setattr(doctor.sysconfig, "get_paths", lambda: {"include": str(include)})
    assert doctor.python_header() is None
    (include / "Python.h").write_text("")
    assert doctor.python_header() == str(include / "Python.h")
    # /proc/driver/nvidia/version as the driver writes it
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs@U16)\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(proc if path == "/proc/driver/nvidia/version" else path, *a, **k),
    )
    assert doctor.driver_version() == "580.65.06"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.172.08  Tue Jul  8 2025\n")
    assert doctor.driver_version() == "570.172.08"
    proc.unlink()
    assert doctor.driver_version() is None


def test_driver_cuda_version_reads_libcuda(monkeypatch: pytest.MonkeyPatch) -> None:
    class _LibCuda:
        def cuDriverGetVersion(self, out: Any) -> int:  # noqa: N802 (the driver API's name)
            out._obj.value = 12080
            return 0

    monkeypatch.setattr(doctor.ctypes, "CDLL", lambda name: _LibCuda())
    assert doctor.driver_cuda_version() == "12.8"

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(doctor.ctypes, "CDLL", missing)
    assert doctor.driver_cuda_version() is None


def test_ort_cuda_version_prefers_the_module_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.ort, "cuda_version", "12.2", raising=False)  # as 1.20.x wheels have it
    assert doctor._ort_cuda_version() == "12.2"


def test_auto_that_resolves_to_cuda_counts_as_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from camserve.service.workers import default_workers

    monkeypatch.setattr(doctor.os, "cpu_count", lambda: 16)
    auto = CamserveConfig.load(env={"CAMSERVE_DEVICE": "auto"})
    monkeypatch.setattr(runtime, "_cuda_usable", lambda: True)
    assert runtime.uses_cuda("auto") and default_workers(auto) == 1
    monkeypatch.setattr(runtime, "_cuda_usable", lambda: False)
    assert not runtime.uses_cuda("auto") and default_workers(auto) == 8
    assert runtime.uses_cuda("cuda:1") and not runtime.uses_cuda("cpu")


def test_the_stack_line_names_the_provider_and_the_driver_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "gpu_stack", lambda: GOOD_STACK)
    line = doctor.describe_stack(torch.device("cuda", 0), "CUDAExecutionProvider")
    assert line == (
        "device cuda:0, onnxruntime 1.31.1 (CUDAExecutionProvider), torch 2.14.1+cu130, NVIDIA driver "
        "580.65.06 (CUDA 13.0; torch needs CUDA 13.0, driver R580+), triton 3.8.0 (C compiler "
        "/usr/bin/gcc, Python.h True)"
    )
    cpu = doctor.describe_stack(torch.device("cpu"), "CPUExecutionProvider")
    assert cpu == "device cpu, onnxruntime 1.31.1 (CPUExecutionProvider), torch 2.14.1+cu130"


class _CpuOnlySession:
    """What ONNX Runtime returns when the CUDA provider fails to load: a session on the CPU."""

    def __init__(self, path: str, options: Any, providers: list[Any]) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def _cuda_runner(model_dir: ModelDirectory, runtime_config: RuntimeConfig) -> runtime.OnnxGraphRunner:
    runner = runtime.OnnxGraphRunner(model_dir, runtime_config)
    runner.device = torch.device("cuda", 3)
    runner._stream = SimpleNamespace(cuda_stream=1234)  # type: ignore[assignment]
    return runner


def test_cuda_provider_options(model_dir: ModelDirectory) -> None:
    options = _cuda_runner(model_dir, RuntimeConfig(device="cpu")).cuda_provider_options()
    assert options == {
        "device_id": "3",
        "use_tf32": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "has_user_compute_stream": "1",
        "user_compute_stream": "1234",
    }
    if "allow_tf32" in RuntimeConfig.__dataclass_fields__:
        tf32 = _cuda_runner(model_dir, RuntimeConfig(device="cpu", allow_tf32=True))  # type: ignore[call-arg]
        assert tf32.cuda_provider_options()["use_tf32"] == "1"


def test_a_cuda_provider_that_did_not_load_is_an_error(
    model_dir: ModelDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.ort, "InferenceSession", _CpuOnlySession)
    runner = _cuda_runner(model_dir, RuntimeConfig(device="cpu"))
    with pytest.raises(
        UnsupportedError, match=r"explain graph: ONNX Runtime's CUDA provider did not load on cuda:3"
    ):
        runner.session("explain")


def test_warm_up_runs_every_graph_and_the_kernels(model_dir: ModelDirectory) -> None:
    runner = runtime.OnnxGraphRunner(model_dir, RuntimeConfig(device="cpu"))
    timings = runtime.warm_up(runner, "triton")  # the interpreter on the CPU
    assert {"explain", "kernels", "head"} <= set(timings)
    assert all(seconds > 0 for seconds in timings.values())
    graphs = {"explain", "head"} | {
        g for g in ("forward", "guided", "fullgradient") if model_dir.has_graph(g)
    }
    assert set(runner._sessions) == graphs


def test_main_reports_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    problems = doctor.gpu_stack_problems()
    if problems:
        with pytest.raises(SystemExit) as exit_info:
            doctor.main([])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.splitlines() == [f"problem: {p}" for p in problems]
    else:
        doctor.main([])
        out = capsys.readouterr().out
        assert "loaded provider            CUDAExecutionProvider" in out
        assert "the CUDA provider can load and loaded on a CUDA device" in out


def test_main_build_checks_the_install_without_a_device(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_device = {"CUDA devices": 0, "NVIDIA driver": None}
    monkeypatch.setattr(doctor, "gpu_stack", lambda: {**GOOD_STACK, **no_device})
    doctor.main(["--build"])
    out = capsys.readouterr().out
    assert "NVIDIA driver              None" in out and out.endswith("the CUDA provider can load\n")
    monkeypatch.setattr(doctor, "gpu_stack", lambda: {**GOOD_STACK, "C compiler": None})
    with pytest.raises(SystemExit) as exit_info:
        doctor.main(["--build"])
    assert exit_info.value.code == 1 and "problem: triton 3.8.0" in capsys.readouterr().err


def test_loaded_provider_on_the_cpu_runs_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctor.loaded_provider(torch.device("cpu")) == "CPUExecutionProvider"
    # on a GPU whose CUDA provider falls back, the probe session names the CPU provider
    monkeypatch.setattr(doctor, "preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(runtime.ort, "InferenceSession", _CpuOnlySession)
    assert doctor.loaded_provider(torch.device("cuda", 0)) == "CPUExecutionProvider"
