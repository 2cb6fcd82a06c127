"""The GPU check: what only a CUDA machine can verify, in one command and one table.

    bash bench/gpu_check.sh                   # on a bare GPU machine: venv, install, then everything
    python bench/gpu_check.py                 # everything, in an installed environment
    python bench/gpu_check.py --skip-load     # kernels and graphs only
    python bench/gpu_check.py --dry-run       # the same code on the CPU (Triton interpreter, the
                                              # embedded model, small shapes): tested in CI

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
skipped silently. ``--dry-run`` differs only by its ``Plan``: the device is the CPU, the kernels run
in Triton's interpreter at small shapes, the graphs are the embedded default model's, and the load is
shorter; the GPU path is the same code with ``Plan.gpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from timing import cuda_median_ms, median_seconds  # noqa: E402

# Tolerances (docs/kernels.md quotes them). Kernels: float32 sums in another order, relative to the
# largest reference value. Graphs: cuDNN vs the CPU provider's convolutions in float32 (TF32 off).
KERNEL_RTOL = 1e-4
UINT8_LEVELS = 1  # a map value on a rounding boundary may land one level away
GRAPH_RTOL = 1e-3  # logits / activations / gradients, relative to each tensor's largest |value|
MAP_ATOL = 2e-3  # normalised [0, 1] Grad-CAM maps

SHAPES = {"resnet50.layer4": (2048, 7, 7), "vgg16.features": (512, 14, 14), "vit_b_16.blocks": (768, 14, 14)}
# the dry run's: the same shape classes (one tile, a 14x14 plane) with few channels
DRY_SHAPES = {"resnet50.layer4/64": (64, 7, 7), "vgg16.features/16": (16, 14, 14)}


@dataclass(frozen=True)
class Plan:
    """What a run checks, and where. ``gpu`` is the check; ``dry`` the same steps on the CPU."""

    device: torch.device
    shapes: dict[str, tuple[int, int, int]]
    batches: tuple[int, ...]  # kernel batch sizes; the small one splits the channel loop on a GPU
    map_batch: int
    map_size: int
    reps: int
    graph_batch: int
    model: str  # "resnet50": exported with seeded weights; "default": the embedded default model
    load_seconds: float
    concurrency: int

    @staticmethod
    def gpu(device: torch.device, reps: int, load_seconds: float) -> Plan:
        return Plan(device, SHAPES, (64, 1), 64, 224, reps, 8, "resnet50", load_seconds, 16)

    @staticmethod
    def dry(reps: int, load_seconds: float) -> Plan:
        return Plan(torch.device("cpu"), DRY_SHAPES, (2, 1), 2, 32, reps, 2, "default", load_seconds, 2)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn: Callable[[], object], flush: torch.Tensor) -> float:
        """CUDA-event median with a cold L2 on a GPU; wall-clock median on the CPU."""
        if self.device.type == "cuda":
            return cuda_median_ms(fn, self.reps, flush)
        return 1e3 * median_seconds(fn, self.reps)

    def programs_wanted(self) -> int:
        if self.device.type == "cuda":  # as the launchers plan
            return 2 * torch.cuda.get_device_properties(self.device).multi_processor_count
        from camserve.kernels import triton_cam

        return triton_cam.INTERPRETER_PROGRAMS_WANTED


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


def check_kernels(plan: Plan) -> list[Row]:
    from camserve import kernels
    from camserve.kernels import launch, reference

    device = plan.device
    rows = []
    flush_size = 64 * 2**20 if device.type == "cuda" else 1  # 256 MiB > any L2
    flush = torch.empty(flush_size, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    wanted = plan.programs_wanted()
    size = (plan.map_size, plan.map_size)
    for name, (k, h, w) in plan.shapes.items():
        for n in plan.batches:
            a = torch.randn(n, k, h, w, generator=gen, device=device).clamp_min(0)
            g = 0.1 * torch.randn(n, 1, k, h, w, generator=gen, device=device)
            model = launch.bytes_moved(n, 1, k, h * w, programs_wanted=wanted)
            splits = int(model["splits"])
            for method in kernels.WEIGHT_METHODS:
                out = kernels.gradient_weighted_cam(a, g, method, "triton")
                error = _rel_error(out, reference.gradient_weighted_cam(a, g, method))
                ms = plan.median_ms(lambda: kernels.gradient_weighted_cam(a, g, method, "triton"), flush)
                ref_ms = plan.median_ms(lambda: reference.gradient_weighted_cam(a, g, method), flush)
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
                ms = plan.median_ms(lambda: kernels.elementwise_sum_relu(a, g, relu, "triton"), flush)
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
        maps = torch.randn(plan.map_batch, 1, h, w, generator=gen, device=device).clamp_min(0)
        for to_uint8 in (False, True):
            out = kernels.upsample_normalize(maps, size, True, 1e-7, to_uint8, "triton")
            expected = reference.upsample_normalize(maps, size, True, 1e-7, to_uint8)
            if to_uint8:
                levels = (out.int() - expected.int()).abs().max().item()
                shown, ok = f"{levels} level", levels <= UINT8_LEVELS
            else:
                value = _rel_error(out, expected)
                shown, ok = f"{value:.1e}", value <= KERNEL_RTOL
            ms = plan.median_ms(
                lambda: kernels.upsample_normalize(maps, size, True, 1e-7, to_uint8, "triton"), flush
            )
            moved = maps.numel() * 4 + plan.map_batch * size[0] * size[1] * (1 if to_uint8 else 4)
            rows.append(
                Row(
                    f"kernel upsample{' uint8' if to_uint8 else ''}",
                    f"{h}x{w}->{size[0]} N={plan.map_batch}",
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


def _model_dir(plan: Plan, directory: Path) -> Path:
    if plan.model == "resnet50":
        return _export_resnet50(directory)
    from camserve.config import CamserveConfig
    from camserve.default_model import default_model_dir

    source = default_model_dir(cache_dir=CamserveConfig.load(env={}).runtime.cache_dir)
    return Path(shutil.copytree(source, directory / "default"))


def check_graphs(model_dir: Path, plan: Plan) -> list[Row]:
    from camserve import kernels
    from camserve.config import RuntimeConfig
    from camserve.modeldir import ModelDirectory
    from camserve.runtime import OnnxGraphRunner, warm_up

    device = plan.device
    directory = ModelDirectory(model_dir)
    cpu_runner = OnnxGraphRunner(directory, RuntimeConfig(device="cpu"))
    shape = (plan.graph_batch, *cpu_runner.input_size)
    size = (int(shape[-2]), int(shape[-1]))
    images = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[-1]] * plan.graph_batch)
    cpu = cpu_runner.explain(images, targets)
    cpu_maps = kernels.upsample_normalize(
        kernels.gradient_weighted_cam(cpu.activations, cpu.gradients, "gradcam", "torch"),
        size,
        backend="torch",
    )
    rows = []
    for tf32 in (False, True):
        runner = OnnxGraphRunner(directory, RuntimeConfig(device=str(device), allow_tf32=tf32))
        warm = sum(warm_up(runner).values())
        gpu_images, gpu_targets = images.to(device), targets.to(device)
        out = runner.explain(gpu_images, gpu_targets)
        if out.activations.device != device:
            raise AssertionError(f"the explain outputs are on {out.activations.device}, not {device}")
        maps = kernels.upsample_normalize(
            kernels.gradient_weighted_cam(out.activations, out.gradients, "gradcam"), size
        )
        errors = {
            "logits": _rel_error(out.logits.cpu(), cpu.logits),
            "A": _rel_error(out.activations.cpu(), cpu.activations),
            "G": _rel_error(out.gradients.cpu(), cpu.gradients),
        }
        map_error = (maps.cpu() - cpu_maps).abs().max().item()
        ms = 1e3 * statistics.median(
            _wall(lambda: runner.explain(gpu_images, gpu_targets), plan) for _ in range(plan.reps)
        )
        ok = tf32 or (max(errors.values()) <= GRAPH_RTOL and map_error <= MAP_ATOL)
        detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        rows.append(
            Row(
                f"graph {device.type.upper()} vs CPU{' (TF32, info)' if tf32 else ''}",
                f"{plan.model} N={plan.graph_batch}: {detail}",
                f"maps {map_error:.1e}",
                f"{ms:.1f} (warm-up {warm:.1f} s)",
                "",
                ok,
            )
        )
    return rows


def _wall(fn: Callable[[], object], plan: Plan) -> float:
    start = time.perf_counter()
    fn()
    plan.synchronize()
    return time.perf_counter() - start


def check_load(model_dir: Path, plan: Plan) -> list[Row]:
    models, device, seconds = model_dir.parent, plan.device, plan.load_seconds
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
            str(plan.concurrency),
            "--warmup-s",
            str(min(5.0, seconds / 3)),
            "--window-s",
            str(seconds / 3),
            "--max-windows",
            "3",
            "--json",
            str(report),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not report.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return [Row("load camserve bench", f"exit {done.returncode}", tail[0], ok=False)]
        summary = json.loads(report.read_text())["levels"][-1]["summary"]
    return [
        Row(
            "load camserve bench",
            f"{plan.concurrency} clients, {plan.model} on {device}: {summary['requests']} requests",
            summary["errors"] or "no errors",
            f"p99 {summary['p99_ms']:.1f}",
            f"{summary['throughput']:.1f} img/s",
            not summary["errors"] and summary["requests"] > 0,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--reps", type=int, help="timed repeats per case (default 20; dry run 1)")
    parser.add_argument("--load-seconds", type=float, help="load test length (default 30; dry run 3)")
    parser.add_argument("--skip-load", action="store_true", help="leave out the server load test")
    parser.add_argument("--dry-run", action="store_true", help="the same checks on the CPU, small")
    parser.add_argument("--since", type=float, help="epoch seconds the run began (gpu_check.sh: install)")
    args = parser.parse_args(argv)
    start = args.since or time.time()
    if args.dry_run:
        # before camserve.kernels.triton_cam is imported: the kernels run in Triton's interpreter
        os.environ["TRITON_INTERPRET"] = "1"
        plan = Plan.dry(args.reps or 1, args.load_seconds or 3.0)
        title = "GPU check, dry run on the CPU (Triton interpreter, small shapes)"
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is visible to torch: this check needs a GPU", file=sys.stderr)
            return 2
        from camserve.runtime import gpu_stack_problems

        problems = gpu_stack_problems()
        if problems:
            print(f"gpu_check: the CUDA path cannot run: {'; '.join(problems)}", file=sys.stderr)
            return 2
        plan = Plan.gpu(torch.device(args.device), args.reps or 20, args.load_seconds or 30.0)
        torch.cuda.set_device(plan.device)
        title = f"GPU check on {torch.cuda.get_device_name(plan.device)}"
    rows = check_kernels(plan)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(plan, Path(tmp))
        rows += check_graphs(model_dir, plan)
        if not args.skip_load:
            rows += check_load(model_dir, plan)
    print(f"\n{title} ({time.time() - start:.0f} s{', install included' if args.since else ''})")
    print(f"{'check':30} {'case':58} {'error':>12} {'ms':>24} {'rate':>12}  ok")
    for r in rows:
        print(f"{r.check:30} {r.detail:58} {r.error:>12} {r.ms:>24} {r.rate:>12}  {'ok' if r.ok else 'FAIL'}")
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
