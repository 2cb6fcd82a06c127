"""``python -m camserve.doctor``: what the CUDA path depends on, as installed here, and why it would
not work.

It prints the GPU stack (torch and onnxruntime builds, providers, CUDA versions, the NVIDIA driver
against the floor of torch's CUDA, the C compiler and ``Python.h`` that Triton builds its launcher
with, and the provider a CUDA session really loaded) and exits with status 1 naming the problem when
the CUDA path cannot work. ``camserve.runtime`` reads the same checks to say why a CUDA device
setting cannot be honoured.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort
import torch

CUDA_PROVIDER = "CUDAExecutionProvider"
# The oldest Linux driver branch for each CUDA major version torch can be built for (NVIDIA's CUDA
# toolkit release notes, "minimum required driver version"): older drivers make torch see no device.
DRIVER_FLOOR = {"13": 580, "12": 525}


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ort_cuda_version() -> str | None:
    """The CUDA version onnxruntime-gpu was built for: ``ort.cuda_version`` (1.20 and later), else the
    wheel's build_and_package_info; None for CPU builds."""
    version = getattr(ort, "cuda_version", None)
    if not version:
        try:
            from onnxruntime.capi import build_and_package_info
        except ImportError:
            return None
        version = getattr(build_and_package_info, "cuda_version", None)
    return str(version) if version else None


def _major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version ('580.65.06'), None without one (Linux: /proc)."""
    try:
        text = open("/proc/driver/nvidia/version", encoding="ascii", errors="replace").read()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def driver_cuda_version() -> str | None:
    """The newest CUDA version the driver's libcuda supports ('13.0'), None without libcuda."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(value)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{value.value // 1000}.{value.value % 1000 // 10}"


def c_compiler() -> str | None:
    """The C compiler Triton builds its launcher with at first use ($CC, else gcc, clang, cc)."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next((found for name in ("gcc", "clang", "cc") if (found := shutil.which(name))), None)


def python_header() -> str | None:
    """This interpreter's Python.h, which Triton's launcher build includes."""
    path = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    return path if os.path.exists(path) else None


def gpu_stack() -> dict[str, Any]:
    """What the CUDA path depends on, as installed here."""
    return {
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "CUDA devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "NVIDIA driver": driver_version(),
        "driver CUDA": driver_cuda_version(),
        "onnxruntime (module)": ort.__version__,
        "onnxruntime (CPU wheel)": _distribution_version("onnxruntime"),
        "onnxruntime-gpu (wheel)": _distribution_version("onnxruntime-gpu"),
        "onnxruntime CUDA": _ort_cuda_version(),
        "onnxruntime providers": ", ".join(ort.get_available_providers()),
        "triton": _distribution_version("triton"),
        "C compiler": c_compiler(),
        "Python.h": python_header(),
    }


def _older(version: str, than: str) -> bool:
    return tuple(int(v) for v in version.split(".")) < tuple(int(v) for v in than.split("."))


def gpu_stack_problems(stack: dict[str, Any] | None = None) -> list[str]:
    """Why ONNX Runtime's CUDA provider, torch's CUDA or Triton's kernels cannot run here; empty when
    nothing is known to be wrong."""
    s = gpu_stack() if stack is None else stack
    problems = []
    cpu_wheel, gpu_wheel = s["onnxruntime (CPU wheel)"], s["onnxruntime-gpu (wheel)"]
    has_provider = CUDA_PROVIDER in s["onnxruntime providers"].split(", ")
    if gpu_wheel is None:
        problems.append(
            "onnxruntime-gpu is not installed: camserve installs it on Linux x86_64 (PyPI has no CUDA "
            "wheel for other platforms); pip uninstall -y onnxruntime && "
            "pip install 'onnxruntime-gpu>=1.28,<1.32'"
        )
    elif cpu_wheel is not None and not has_provider:
        problems.append(
            f"both onnxruntime {cpu_wheel} and onnxruntime-gpu {gpu_wheel} are installed; they write the "
            "same 'onnxruntime' module and the CPU wheel's files won. Fix: pip uninstall -y onnxruntime "
            f"onnxruntime-gpu && pip install 'onnxruntime-gpu=={gpu_wheel}'"
        )
    elif not has_provider:
        problems.append(f"onnxruntime-gpu {gpu_wheel} is installed but offers no {CUDA_PROVIDER}")
    if s["torch CUDA"] is None:
        problems.append(f"torch {s['torch']} is a CPU-only build: install a CUDA wheel of torch")
    elif _major(s["onnxruntime CUDA"]) not in (None, _major(s["torch CUDA"])):
        problems.append(
            f"CUDA major versions differ: torch {s['torch']} is built for CUDA {s['torch CUDA']}, "
            f"onnxruntime-gpu {gpu_wheel} for CUDA {s['onnxruntime CUDA']}: install the builds of one "
            "CUDA major version (the two load one process's CUDA libraries)"
        )
    floor = DRIVER_FLOOR.get(_major(s["torch CUDA"]) or "")
    driver, driver_cuda = s["NVIDIA driver"], s["driver CUDA"]
    too_old = (driver is not None and floor is not None and int(driver.split(".")[0]) < floor) or (
        driver_cuda is not None and s["torch CUDA"] is not None and _older(driver_cuda, s["torch CUDA"])
    )
    if too_old:
        problems.append(
            f"the NVIDIA driver {driver or '?'} supports CUDA up to {driver_cuda or '?'}; torch "
            f"{s['torch']} needs CUDA {s['torch CUDA']}, driver R{floor} or newer: upgrade the driver"
        )
    elif not s["CUDA devices"]:
        found = "no NVIDIA driver found" if driver is None else f"NVIDIA driver {driver}"
        problems.append(f"no CUDA device is visible to torch ({found}; CUDA_VISIBLE_DEVICES)")
    if s["triton"] is not None and (s["C compiler"] is None or s["Python.h"] is None):
        missing = " and ".join(
            what for what, key in (("a C compiler", "C compiler"), ("Python.h", "Python.h")) if s[key] is None
        )
        problems.append(
            f"triton {s['triton']} builds its kernel launcher at first use and lacks {missing}: "
            "install gcc and the Python headers (Debian: apt-get install gcc python3-dev), or run with "
            "runtime.kernels = 'torch'"
        )
    return problems


def loaded_provider(device: torch.device) -> str:
    """The provider a session of a one-node graph really runs on ``device`` (ONNX Runtime falls back to
    the CPU with only a warning), or why none was tried."""
    if device.type != "cuda":
        return "CPUExecutionProvider"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=[(CUDA_PROVIDER, {"device_id": str(device.index or 0)}), "CPUExecutionProvider"],
    )
    return str(session.get_providers()[0])


def describe_stack(device: torch.device, provider: str) -> str:
    """One line for a server's start: what runs the graphs (``provider``: the one a session loaded)
    and the kernels on ``device``, with the driver against the floor of torch's CUDA."""
    s = gpu_stack()
    line = f"device {device}, onnxruntime {s['onnxruntime (module)']} ({provider}), torch {s['torch']}"
    if device.type == "cuda":
        line += (
            f", NVIDIA driver {s['NVIDIA driver']} (CUDA {s['driver CUDA']}; torch needs CUDA "
            f"{s['torch CUDA']}, driver R{DRIVER_FLOOR.get(_major(s['torch CUDA']) or '', '?')}+), "
            f"triton {s['triton']} (C compiler {s['C compiler']}, Python.h {s['Python.h'] is not None})"
        )
    return line


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels that torch's CUDA build installed,
    as ONNX Runtime documents for using both in one process (onnxruntime-gpu >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m camserve.doctor``: print the GPU stack; exit 1 naming what stops the CUDA provider."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m camserve.doctor", description=main.__doc__)
    parser.add_argument(
        "--build", action="store_true", help="check the install only, not for a device (image builds)"
    )
    args = parser.parse_args(argv)
    stack = gpu_stack()
    for key, value in stack.items():
        print(f"{key:26} {value}")
    problems = gpu_stack_problems({**stack, "CUDA devices": 1} if args.build else stack)
    if not args.build and not problems:
        provider = loaded_provider(torch.device("cuda", torch.cuda.current_device()))
        print(f"{'loaded provider':26} {provider}")
        if provider != CUDA_PROVIDER:
            problems.append(f"a CUDA session loaded {provider}: see ONNX Runtime's log above")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print("the CUDA provider can load" + ("" if args.build else " and loaded on a CUDA device"))


if __name__ == "__main__":
    main()
