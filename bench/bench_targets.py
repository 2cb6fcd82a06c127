"""Targets as data on segmentation models: explain ÷ forward, and what T region targets cost.

For each torchvision segmentation architecture (random weights; timing does not depend on them),
exported with output kind ``dense`` at ``--size``² (explain + forward graphs, no verification), in
one run on the same inputs (batch ``--batch``, ONNX Runtime on ``--threads`` threads):

  explain / forward   explain-graph time with one ``predicted_region`` target per image ÷ forward-only
                      graph time                                            (goal ≤ 1.15, as classifiers)
  T regions           explain time with T = 1, 2, 4, 8, 16 ``region`` targets (random masks) per image,
                      the graph runs it took (always 1: the masks are graph inputs) and the time per
                      target relative to T = 1

Median of ``--repeats`` timed runs after one warm-up. Usage:
python bench/bench_targets.py [--archs lraspp_mobilenet_v3_large,...] [--size 224] [--batch 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_seconds

from camserve.config import RuntimeConfig
from camserve.export import export_model
from camserve.export.architectures import ARCHITECTURES, SEGMENTATION, build_torchvision
from camserve.methods.target_kinds import KIND_CODE, TargetTable
from camserve.runtime import OnnxGraphRunner


class CountingRunner(OnnxGraphRunner):
    """The ONNX runner, counting graph runs."""

    runs = 0

    def _run(self, graph, inputs, shapes):  # type: ignore[no-untyped-def,override]
        CountingRunner.runs += 1
        return super()._run(graph, inputs, shapes)


def region_table(batch: int, targets: int, grid: tuple[int, int], num_classes: int) -> TargetTable:
    """T region targets per image: class t mod C, a random 0/1 mask on the output grid each."""
    generator = torch.Generator().manual_seed(targets)
    ids = (torch.arange(targets) % num_classes).repeat(batch, 1)
    kinds = torch.full_like(ids, KIND_CODE["region"])
    masks = (torch.rand(batch, targets, grid[0] * grid[1], generator=generator) > 0.5).float()
    return TargetTable(ids, kinds, masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(SEGMENTATION))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--targets", default="1,2,4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime = RuntimeConfig(device="cpu", intra_op_threads=args.threads, inter_op_threads=1)
    size = (3, args.size, args.size)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            defaults = ARCHITECTURES[arch]
            model_dir = export_model(
                build_torchvision(arch, size).eval(),
                defaults.layer,
                size,
                Path(tmp) / arch,
                name=arch,
                architecture=arch,
                mean=[0.0] * 3,
                std=[1.0] * 3,
                output=defaults.output,
                output_kind="dense",
                graphs=("explain", "forward"),
                verify=False,
            )
            runner = CountingRunner(model_dir, runtime)
            spec = model_dir.manifest.target_spec()
            grid = (int(spec.output_shape[1]), int(spec.output_shape[2]))
            images = torch.randn(args.batch, *size, generator=torch.Generator().manual_seed(1))
            one = TargetTable(
                torch.full((args.batch, 1), -1, dtype=torch.int64),
                torch.full((args.batch, 1), KIND_CODE["predicted_region"], dtype=torch.int64),
                torch.zeros(args.batch, 1, grid[0] * grid[1]),
            )
            t_explain = median_seconds(lambda: runner.explain(images, one), args.repeats)
            t_forward = median_seconds(lambda: runner.forward(images), args.repeats)
            ratios.append((arch, t_forward, t_explain))
            print(
                f"{arch:30s} forward {t_forward * 1e3:8.1f} ms  explain {t_explain * 1e3:8.1f} ms  "
                f"explain/forward {t_explain / t_forward:6.3f} (goal ≤ 1.15)",
                flush=True,
            )
            base = None
            for count in (int(v) for v in args.targets.split(",")):
                table = region_table(args.batch, count, grid, spec.num_classes)
                runner.explain(images, table)  # warm-up, and one call's graph runs
                CountingRunner.runs = 0
                runner.explain(images, table)
                runs = CountingRunner.runs
                seconds = median_seconds(lambda table=table: runner.explain(images, table), args.repeats)
                base = base or seconds
                print(
                    f"    T = {count:2d} regions: {seconds * 1e3:8.1f} ms, {runs} graph run(s), "
                    f"{seconds / base:5.2f}× T = 1, {seconds / base / count:5.3f}× T = 1 per target",
                    flush=True,
                )
    print()
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, median of {args.repeats}")
    print(f"{'arch':30s} {'forward ms':>11s} {'explain ms':>11s} {'explain/forward':>16s} {'goal':>6s}")
    for arch, t_forward, t_explain in ratios:
        print(
            f"{arch:30s} {t_forward * 1e3:11.1f} {t_explain * 1e3:11.1f} "
            f"{t_explain / t_forward:16.3f} {'≤1.15':>6s}"
        )


if __name__ == "__main__":
    main()
