"""Compiles the Triton kernels ahead of time for real GPU targets, without a GPU.

``python -m tests.kernels.kernel_compile --shard I/N`` compiles every I-th-of-N item of
:func:`compile_items` (each launch configuration of ``camserve.kernels.launch.launch_configs`` x
input dtype x target) with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
and prints one JSON line per item: registers and spilled (local) bytes per thread from
``cuobjdump --dump-resource-usage`` of the cubin (what ``CompiledKernel.n_regs`` / ``n_spills``
read from the driver on a GPU), shared memory, seconds, and the error if it failed.
It must run without TRITON_INTERPRET (the kernels are then compiler-mode ``JITFunction``s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

TARGETS: tuple[int, ...] = (80, 90)  # A100, H100/H200
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
_SCALAR_FLOATS = {"scale_h", "scale_w", "eps"}


def compile_items() -> Iterator[tuple[Any, str, int]]:
    """(launch, input dtype, compute capability) for every configuration the dispatcher launches."""
    from camserve.kernels import launch

    for step in launch.launch_configs():
        for dtype in DTYPES:
            for cc in TARGETS:
                yield step, dtype, cc


def _signature(fn: Any, step: Any, dtype: str) -> tuple[dict[str, str], dict[tuple[int, ...], Any]]:
    """Triton types of ``fn``'s arguments as the launchers pass them, and the 16-byte alignment
    attributes the launcher's specialisation gives torch's (aligned) buffers."""
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], Any] = {}
    constants = step.constants
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name == "partial_ptr":
            signature[name] = "*fp32"
        elif name == "out_ptr" and constants.get("TO_UINT8"):
            signature[name] = "*u8"
        elif name.endswith("_ptr"):
            signature[name] = (
                "*fp32" if step.kernel == "_sum_splits_relu_kernel" and name == "src_ptr" else f"*{dtype}"
            )
        elif name in _SCALAR_FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if name.endswith("_ptr"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _resources(cubin: bytes) -> dict[str, int]:
    """REG / LOCAL (spilled bytes per thread) / SHARED of the cubin's kernel, read by cuobjdump."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", text.split("Function", 1)[-1]))
    return {key.lower(): int(value) for key, value in found.items()}


def compile_one(step: Any, dtype: str, cc: int) -> dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from camserve.kernels import triton_cam

    fn = getattr(triton_cam, step.kernel)
    signature, attrs = _signature(fn, step, dtype)
    record: dict[str, Any] = {
        "kernel": step.kernel,
        "constexprs": step.constants,
        "dtype": dtype,
        "sm": cc,
        "num_warps": step.num_warps,
    }
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, step.constants, attrs),
            target=GPUTarget("cuda", cc, 32),
            options={"num_warps": step.num_warps},
        )
        record.update(_resources(compiled.asm["cubin"]))
        record["n_spills"] = record.get("local", 0) // 4  # what the driver's n_spills reports (32-bit words)
    except Exception as exc:  # every compiler failure is a result to report, not a crash of the run
        record["error"] = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        )
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th item starting at I")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: the compile check needs Triton's compiler mode")
    index, count = (int(v) for v in args.shard.split("/"))
    for position, (step, dtype, cc) in enumerate(compile_items()):
        if position % count == index:
            print(json.dumps(compile_one(step, dtype, cc)), flush=True)


if __name__ == "__main__":
    main()
