"""The GPU check: what only a CUDA machine can verify, in one command and one table (< 5 minutes).

    python bench/gpu_check.py                 # everything
    python bench/gpu_check.py --skip-load     # kernels and graphs only

1. Kernels: every Triton CAM kernel vs the torch reference at real shapes (ResNet-50 layer4
   2048x7x7, VGG-16 512x14x14, ViT-B/16 768x14x14; batch 64, and batch 1 where the channel loop
   is split), with median CUDA-event times (cold L2) and achieved GB/s of the bytes the model in
   ``kernels/launch.py`` counts.
2. Graphs: a ResNet-50 (seeded random weights, 224x224) explain graph on the CUDA provider with IO
   binding vs the CPU provider, on the same batch: logits, activations, gradients and normalised
   Grad-CAM maps within the tolerances below (TF32 off, the default); the TF32 row is informative.
3. Load: ``camserve bench`` against a ``camserve serve --device cuda`` child on 127.0.0.1 (closed
   loop, 16 clients): no errors, and the throughput and p99 latency it measured.

Every check that fails makes the exit status 1 (the table still prints); without a CUDA device, or
with an install whose CUDA provider cannot load, it refuses in one line with status 2. Nothing is
skipped silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the shared timing helper
from timing import cuda_median_ms  # noqa: E402

# Tolerances (docs/kernels.md quotes them). Kernels: float32 sums in another order, relative to the
# largest reference value. Graphs: cuDNN vs the CPU provider's convolutions in float32 (TF32 off).
KERNEL_RTOL = 1e-4
UINT8_LEVELS = 1  # a map value on a rounding boundary may land one level away
GRAPH_RTOL = 1e-3  # logits / activations / gradients, relative to each tensor's largest |value|
MAP_ATOL = 2e-3  # normalised [0, 1] Grad-CAM maps

SHAPES = {"resnet50.layer4": (2048, 7, 7), "vgg16.features": (512, 14, 14), "vit_b_16.blocks": (768, 14, 14)}


@dataclass
class Row:
    check: str
    detail: str
    error: str = ""
    ms: str = ""
    rate: str = ""
    ok: bool = True


def _rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.double().abs().max().item() or 1.0
    return (x.double() - ref.double()).abs().max().item() / scale


def check_kernels(device: torch.device, reps: int) -> list[Row]:
    from camserve import kernels
    from camserve.kernels import launch, reference

    rows = []
    flush = torch.empty(64 * 2**20, dtype=torch.float32, device=device)  # 256 MiB > any L2
    gen = torch.Generator(device=device).manual_seed(0)
    wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count  # as the launchers plan
    for name, (k, h, w) in SHAPES.items():
        for n in (64, 1):
            a = torch.randn(n, k, h, w, generator=gen, device=device).clamp_min(0)
            g = 0.1 * torch.randn(n, 1, k, h, w, generator=gen, device=device)
            model = launch.bytes_moved(n, 1, k, h * w, programs_wanted=wanted)
            splits = int(model["splits"])
            for method in kernels.WEIGHT_METHODS:
                out = kernels.gradient_weighted_cam(a, g, method, "triton")
                error = _rel_error(out, reference.gradient_weighted_cam(a, g, method))
                ms = cuda_median_ms(
                    lambda: kernels.gradient_weighted_cam(a, g, method, "triton"), reps, flush
                )
                ref_ms = cuda_median_ms(lambda: reference.gradient_weighted_cam(a, g, method), reps, flush)
                moved = model["with_splits"]
                rows.append(
                    Row(
                        f"kernel {method}",
                        f"{name} N={n} S={splits}",
                        f"{error:.1e}",
                        f"{ms:.3f} (torch {ref_ms:.3f})",
                        f"{moved / (ms * 1e-3) / 1e9:.0f} GB/s",
                        error <= KERNEL_RTOL,
                    )
                )
            for relu, label in ((True, "layercam"), (False, "hirescam")):
                out = kernels.elementwise_sum_relu(a, g, relu, "triton")
                error = _rel_error(out, reference.elementwise_sum_relu(a, g, relu))
                ms = cuda_median_ms(lambda: kernels.elementwise_sum_relu(a, g, relu, "triton"), reps, flush)
                moved = n * (2 * k * h * w + h * w) * 4
                rows.append(
                    Row(
                        f"kernel {label}",
                        f"{name} N={n}",
                        f"{error:.1e}",
                        f"{ms:.3f}",
                        f"{moved / (ms * 1e-3) / 1e9:.0f} GB/s",
                        error <= KERNEL_RTOL,
                    )
                )
            weights = kernels.channel_weights_for_methods(a, g, list(kernels.WEIGHT_METHODS), "triton")
            error = max(
                _rel_error(weights[m], reference.channel_weights(a, g, m)) for m in kernels.WEIGHT_METHODS
            )
            rows.append(Row("kernel weights x3", f"{name} N={n}", f"{error:.1e}", ok=error <= KERNEL_RTOL))
        maps = torch.randn(64, 1, h, w, generator=gen, device=device).clamp_min(0)
        for to_uint8 in (False, True):
            out = kernels.upsample_normalize(maps, (224, 224), True, 1e-7, to_uint8, "triton")
            expected = reference.upsample_normalize(maps, (224, 224), True, 1e-7, to_uint8)
            if to_uint8:
                levels = (out.int() - expected.int()).abs().max().item()
                shown, ok = f"{levels} level", levels <= UINT8_LEVELS
            else:
                value = _rel_error(out, expected)
                shown, ok = f"{value:.1e}", value <= KERNEL_RTOL
            ms = cuda_median_ms(
                lambda: kernels.upsample_normalize(maps, (224, 224), True, 1e-7, to_uint8, "triton"),
                reps,
                flush,
            )
            moved = maps.numel() * 4 + 64 * 224 * 224 * (1 if to_uint8 else 4)
            rows.append(
                Row(
                    f"kernel upsample{' uint8' if to_uint8 else ''}",
                    f"{h}x{w}->224 N=64",
                    shown,
                    f"{ms:.3f}",
                    f"{moved / (ms * 1e-3) / 1e9:.0f} GB/s",
                    ok,
                )
            )
    return rows


def _export_resnet50(directory: Path) -> Path:
    from camserve.export import export_model
    from camserve.export.architectures import ARCHITECTURES, build_torchvision

    torch.manual_seed(0)
    model = build_torchvision("resnet50", (3, 224, 224)).eval()
    return export_model(
        model,
        ARCHITECTURES["resnet50"].layer,
        (3, 224, 224),
        directory / "resnet50",
        name="resnet50",
        architecture="resnet50",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        graphs=("explain", "head"),
        verify=False,
    )


def check_graphs(model_dir: Path, device: torch.device, reps: int) -> list[Row]:
    from camserve import kernels
    from camserve.config import RuntimeConfig
    from camserve.modeldir import ModelDirectory
    from camserve.runtime import OnnxGraphRunner, warm_up

    directory = ModelDirectory(model_dir)
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[-1]] * 8)
    cpu = OnnxGraphRunner(directory, RuntimeConfig(device="cpu")).explain(images, targets)
    cpu_maps = kernels.upsample_normalize(
        kernels.gradient_weighted_cam(cpu.activations, cpu.gradients, "gradcam", "torch"),
        (224, 224),
        backend="torch",
    )
    rows = []
    for tf32 in (False, True):
        runner = OnnxGraphRunner(directory, RuntimeConfig(device=str(device), allow_tf32=tf32))
        warm = sum(warm_up(runner).values())
        gpu_images, gpu_targets = images.to(device), targets.to(device)
        out = runner.explain(gpu_images, gpu_targets)
        assert out.activations.device == device, "the explain outputs did not stay on the GPU"
        maps = kernels.upsample_normalize(
            kernels.gradient_weighted_cam(out.activations, out.gradients, "gradcam"), (224, 224)
        )
        errors = {
            "logits": _rel_error(out.logits.cpu(), cpu.logits),
            "A": _rel_error(out.activations.cpu(), cpu.activations),
            "G": _rel_error(out.gradients.cpu(), cpu.gradients),
        }
        map_error = (maps.cpu() - cpu_maps).abs().max().item()
        ms = 1e3 * statistics.median(
            _wall(lambda: runner.explain(gpu_images, gpu_targets)) for _ in range(reps)
        )
        ok = tf32 or (max(errors.values()) <= GRAPH_RTOL and map_error <= MAP_ATOL)
        detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        rows.append(
            Row(
                f"graph CUDA vs CPU{' (TF32, info)' if tf32 else ''}",
                f"resnet50 N=8: {detail}",
                f"maps {map_error:.1e}",
                f"{ms:.1f} (warm-up {warm:.1f} s)",
                "",
                ok,
            )
        )
    return rows


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def check_load(model_dir: Path, device: torch.device, seconds: float) -> list[Row]:
    models = model_dir.parent
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "load.json"
        argv = [
            sys.executable,
            "-m",
            "camserve.cli",
            "bench",
            "--models",
            str(models),
            "--server-flag",
            f"--device {device.type}",
            "--concurrency",
            "16",
            "--warmup-s",
            "5",
            "--window-s",
            str(seconds / 3),
            "--max-windows",
            "3",
            "--json",
            str(report),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
        if done.returncode != 0 or not report.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return [Row("load camserve bench", f"exit {done.returncode}", tail[0], ok=False)]
        summary = json.loads(report.read_text())["levels"][-1]["summary"]
    return [
        Row(
            "load camserve bench",
            f"16 clients, resnet50 on {device}: {summary['requests']} requests",
            summary["errors"] or "no errors",
            f"p99 {summary['p99_ms']:.1f}",
            f"{summary['throughput']:.1f} img/s",
            not summary["errors"] and summary["requests"] > 0,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--skip-load", action="store_true", help="leave out the server load test")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch: this check needs a GPU", file=sys.stderr)
        return 2
    from camserve.runtime import gpu_stack_problems

    problems = gpu_stack_problems()
    if problems:
        print(f"gpu_check: the CUDA provider cannot run: {'; '.join(problems)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.cuda.set_device(device)
    start = time.perf_counter()
    rows = check_kernels(device, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _export_resnet50(Path(tmp))
        rows += check_graphs(model_dir, device, args.reps)
        if not args.skip_load:
            rows += check_load(model_dir, device, args.load_seconds)
    print(f"\nGPU check on {torch.cuda.get_device_name(device)} ({time.perf_counter() - start:.0f} s)")
    print(f"{'check':30} {'case':58} {'error':>12} {'ms':>24} {'rate':>12}  ok")
    for r in rows:
        print(f"{r.check:30} {r.detail:58} {r.error:>12} {r.ms:>24} {r.rate:>12}  {'ok' if r.ok else 'FAIL'}")
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
