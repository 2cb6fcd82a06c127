"""camserve.runtime's GPU path, as far as a CPU machine can check it: device parsing, the install
checks and their messages, the CUDA provider's options and the loaded-provider assertion (with a
stand-in session), and the warm-up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from camserve import runtime
from camserve.config import CamserveConfig, RuntimeConfig
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.modeldir import ModelDirectory

GOOD_STACK: dict[str, Any] = {
    "torch": "2.14.1+cu128",
    "torch CUDA": "12.8",
    "CUDA devices": 1,
    "onnxruntime (module)": "1.22.0",
    "onnxruntime (CPU wheel)": None,
    "onnxruntime-gpu (wheel)": "1.22.0",
    "onnxruntime CUDA": "12.4",
    "onnxruntime providers": "TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider",
    "triton": "3.8.0",
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
    assert runtime.gpu_stack_problems(GOOD_STACK) == []
    shadowed = {
        **GOOD_STACK,
        "onnxruntime (CPU wheel)": "1.22.0",
        "onnxruntime CUDA": None,
        "onnxruntime providers": "CPUExecutionProvider",
    }
    (problem,) = runtime.gpu_stack_problems(shadowed)
    assert "both onnxruntime 1.22.0 and onnxruntime-gpu 1.22.0" in problem and "pip uninstall" in problem
    mismatch = runtime.gpu_stack_problems({**GOOD_STACK, "torch CUDA": "13.0"})
    assert mismatch == [
        "CUDA major versions differ: torch 2.14.1+cu128 is built for CUDA 13.0, onnxruntime-gpu 1.22.0 "
        "for CUDA 12.4: install the builds of one CUDA major version (the two load one process's CUDA "
        "libraries)"
    ]
    cpu_only = runtime.gpu_stack_problems({**GOOD_STACK, "onnxruntime-gpu (wheel)": None, "CUDA devices": 0})
    assert cpu_only == [
        "onnxruntime-gpu is not installed (pip install 'camserve[gpu]')",
        "no CUDA device is visible to torch (driver, CUDA_VISIBLE_DEVICES)",
    ]


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
    graphs = {"explain", "head"} | {g for g in ("forward", "guided") if model_dir.has_graph(g)}
    assert set(runner._sessions) == graphs


def test_main_reports_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    problems = runtime.gpu_stack_problems()
    if problems:
        with pytest.raises(SystemExit) as exit_info:
            runtime.main([])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.splitlines() == [f"problem: {p}" for p in problems]
    else:
        runtime.main([])
        assert "the CUDA provider can load and a CUDA device is available" in capsys.readouterr().out
