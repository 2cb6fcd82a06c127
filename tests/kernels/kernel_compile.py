"""Compiles the Triton kernels ahead of time for real GPU targets, without a GPU.

``python -m tests.kernels.kernel_compile --shard I/N`` compiles every I-th-of-N item of
:func:`compile_items` (each launch configuration of ``camserve.kernels.launch.launch_configs`` x
input dtype x target) with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
and prints one JSON line per item: registers and spilled (local) bytes per thread from
``cuobjdump --dump-resource-usage`` of the cubin (what ``CompiledKernel.n_regs`` / ``n_spills``
read from the driver on a GPU), shared memory, seconds, and the error if it failed.
``--specialisations`` instead prints, as JSON, every launch of the launchers on awkward arguments
(unaligned views, sizes of 1 and multiples of 16) whose JIT specialisation differs from what is
compiled here: the kernels specialise on nothing but their constexprs (``_launched_kernel``), so
the list must be empty. It must run without TRITON_INTERPRET (compiler-mode ``JITFunction``s).
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
    """Triton types of ``fn``'s arguments as the launchers pass them, and the attributes of the JIT's
    specialisation: the 16-byte alignment of the pointers the launchers allocate themselves, the only
    runtime arguments not in ``do_not_specialize`` (``_launched_kernel``)."""
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], Any] = {}
    constants = step.constants
    for index, param in enumerate(fn.params):
        name = param.name
        if name.endswith("_ptr") and not param.do_not_specialize:
            attrs[(index,)] = [["tt.divisibility", 16]]
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


_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _awkward_launches(dtype: str) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """(launch, kernel arguments) of every launcher on CPU tensors that would make a default JIT
    compile new variants: sizes 1 and 16, unaligned views (``x[1:]``, ``out[1]`` of odd sizes)."""
    import torch

    from camserve.kernels import triton_cam

    launches: list[tuple[Any, tuple[Any, ...]]] = []
    real_run = triton_cam._run
    triton_cam._run = lambda step, device, *args: launches.append((step, args))  # record, do not launch
    try:
        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        for n, t, k, h, w in (
            (1, 1, 16, 4, 4),
            (3, 2, 5, 7, 7),
            (2, 16, 32, 8, 2),
            (1, 1, 1, 1, 1),
            (1, 1, 2048, 7, 7),
        ):
            # one element more than needed, then [1:]: every tensor starts 2 or 4 bytes off alignment;
            # the last shape splits the channel loop (_sum_splits_relu_kernel)
            a = torch.zeros(n * k * h * w + 1, dtype=torch_dtype)[1:].view(n, k, h, w)
            g = torch.zeros(n * t * k * h * w + 1, dtype=torch_dtype)[1:].view(n, t, k, h, w)
            for tensors in ((a, g), (a.contiguous(), g.contiguous())):
                triton_cam.channel_weights(*tensors, ["gradcam", "gradcam++", "xgradcam"])
                for method in ("gradcam", "gradcam++", "xgradcam"):
                    triton_cam.gradient_weighted_cam(*tensors, method)
                triton_cam.elementwise_sum_relu(*tensors, True)
                triton_cam.weighted_sum_relu(tensors[0], tensors[1][:, :, :, 0, 0])
            maps = torch.zeros(n * t * h * w + 1, dtype=torch_dtype)[1:].view(n, t, h, w)
            for size in ((h, w), (16, 16), (1, 1), (33, 17)):
                for to_uint8 in (False, True):
                    triton_cam.upsample_normalize(maps, size, True, 1e-7, to_uint8)
    finally:
        triton_cam._run = real_run
    yield from launches


def specialisation_mismatches() -> list[dict[str, Any]]:
    """Launches whose JIT specialisation (what Triton would compile on a device) is not the
    signature compiled ahead of time: a runtime argument made constant or given a divisibility or
    alignment hint, or typed otherwise."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import create_function_from_signature

    from camserve.kernels import triton_cam

    mismatches = []
    for dtype in DTYPES:
        for step, args in _awkward_launches(dtype):
            fn = getattr(triton_cam, step.kernel)
            binder = create_function_from_signature(fn.signature, fn.params, BaseBackend)
            _, specialisation, _ = binder(*args, **step.constants)
            signature, attrs = _signature(fn, step, dtype)
            # the JIT's view: (type, key); compiled ahead of time: (constexpr, value), or the type with
            # the alignment key "D" where the compile has the divisibility attribute, else no key
            hinted = {fn.arg_names[index] for (index,) in attrs}
            expected = [
                ("constexpr", step.constants[name])
                if kind == "constexpr"
                else (kind, "D" if name in hinted else None)
                for name, kind in signature.items()
            ]
            got = [tuple(entry) for entry in specialisation]
            if got != expected:
                mismatches.append({"kernel": step.kernel, "dtype": dtype, "jit": got, "compiled": expected})
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th item starting at I")
    parser.add_argument("--specialisations", action="store_true", help="list unseen JIT variants")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: the compile check needs Triton's compiler mode")
    if args.specialisations:
        print(json.dumps(specialisation_mismatches(), default=str))
        return
    index, count = (int(v) for v in args.shard.split("/"))
    for position, (step, dtype, cc) in enumerate(compile_items()):
        if position % count == index:
            print(json.dumps(compile_one(step, dtype, cc)), flush=True)


if __name__ == "__main__":
    main()
