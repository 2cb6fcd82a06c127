"""`camserve batch` throughput: the local engine and the Ray engine next to a plain loop over
Explainer.explain and the graph-bound limit, plus bytes stored per image per method.

For each model, in one run on the same generated JPEG folder (sizes 0.5x-1.5x the input size):
  graph-bound   the explain graph alone (ONNX Runtime) on already-decoded tensors, batch --batch
  plain loop    for each batch of paths: Explainer.explain(paths) (decodes serially, then explains),
                with default torch/ORT threads, as a user would write it
  local engine  run_batch(engine="local"): decode pool overlapped with the graph, shards written
  ray engine    run_batch(engine="ray") on a local Ray already started (cluster start-up excluded,
                actor start-up included), actors x CPUs per actor = the machine's cores
Goals (ratios from this one run): local >= 0.9x graph-bound; ray >= 0.8x local. Engines are given
overall (workers' start-up included) and steady (over the second half of the 8 shards) rates.
Models: the default digits model (64x64) and ResNet-50 at 224x224 with seeded random weights.
Usage: python bench/bench_batch.py [--models digits,resnet50] [--images 2000,160] [--batch 32,16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from camserve import Explainer
from camserve.batch.engine_ray import RayOptions
from camserve.batch.job import JobConfig
from camserve.batch.outdir import map_column
from camserve.batch.run import run_batch
from camserve.batch.sources import SourceSpec
from camserve.config import CamserveConfig

METHOD = "gradcam"
SHARDS = 8  # shards per engine run: the steady rate is measured over the second half


def make_images(folder: Path, count: int, side: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        height, width = (int(side * f) for f in rng.uniform(0.5, 1.5, size=2))
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(
            folder / f"{index:06d}.jpg", quality=90
        )


def export_resnet50(out: Path) -> Path:
    """ResNet-50 at 224x224 with seeded random weights, as bench_export.py exports it."""
    from camserve.export import export_model
    from camserve.export.architectures import ARCHITECTURES, build_torchvision

    torch.manual_seed(0)
    defaults = ARCHITECTURES["resnet50"]
    model = build_torchvision("resnet50", (3, 224, 224)).eval()
    directory = export_model(
        model,
        defaults.layer,
        (3, 224, 224),
        out,
        name="resnet50",
        architecture="resnet50",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        layout=defaults.layout,
        graphs=("explain", "forward"),
        verify=False,
    )
    return directory.path


def graph_bound(explainer: Explainer, paths: list[Path], batch: int) -> float:
    """Images/s of the explain graph alone on tensors decoded beforehand (not timed)."""
    tensors = [
        explainer.preprocess([str(p) for p in paths[i : i + batch]]) for i in range(0, len(paths), batch)
    ]
    targets = [torch.full((t.shape[0], 1), -1, dtype=torch.int64) for t in tensors]
    explainer.runner.explain(tensors[0], targets[0])  # warm-up
    start = time.perf_counter()
    for images, target in zip(tensors, targets, strict=True):
        explainer.runner.explain(images, target)
    return len(paths) / (time.perf_counter() - start)


def plain_loop(explainer: Explainer, paths: list[Path], batch: int) -> float:
    explainer.explain([str(paths[0])], methods=[METHOD])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        explainer.explain([str(p) for p in paths[i : i + batch]], methods=[METHOD])
    return len(paths) / (time.perf_counter() - start)


def engine(
    explainer: Explainer,
    model: str | None,
    folder: Path,
    out: Path,
    batch: int,
    shard_size: int,
    name: str,
    ray: RayOptions,
) -> tuple[float, float, float]:
    """(images/s overall, images/s over the second half of the shards, stored bytes per image of the
    map column) of one engine run."""
    import pyarrow.parquet as pq

    job = JobConfig(
        model=model,
        out=str(out),
        source=SourceSpec(input=str(folder)),
        methods=(METHOD,),
        targets=None,
        config=explainer.config,
        batch_size=batch,
        shard_size=shard_size,
        decode_workers=2,
    )
    summary = run_batch(job, engine=name, ray=ray, progress=False, explainer=explainer)
    column = map_column(METHOD)
    stored = 0
    for path in out.glob("part-*.parquet"):
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        index = names.index(column)
        stored += sum(
            meta.row_group(g).column(index).total_compressed_size for g in range(meta.num_row_groups)
        )
    return summary.images_per_second, summary.steady_images_per_second, stored / max(summary.total_rows, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet50")
    parser.add_argument("--images", default="2000,160", help="images per model, comma-separated")
    parser.add_argument("--batch", default="32,16", help="batch size per model, comma-separated")
    parser.add_argument("--ray-actors", type=int, default=0, help="0: one per core, 1 CPU each")
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 1
    actors = args.ray_actors or cores
    ray.init(
        num_cpus=cores, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False
    )
    rows = []
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        counts = [int(n) for n in args.images.split(",")]
        batches = [int(n) for n in args.batch.split(",")]
        for model_name, count, batch in zip(args.models.split(","), counts, batches, strict=True):
            shard_size = max(batch, count // SHARDS)
            model = None if model_name == "digits" else str(export_resnet50(tmp / "resnet50"))
            config = CamserveConfig.load(env={})
            explainer = Explainer(model, config=config)
            _, side, _ = explainer.input_size
            folder = tmp / f"images-{model_name}"
            make_images(folder, count, side)
            paths = sorted(folder.iterdir())
            figures = {
                "graph": graph_bound(explainer, paths, batch),
                "loop": plain_loop(explainer, paths, batch),
            }
            figures["local"], figures["local steady"], stored = engine(
                explainer,
                model,
                folder,
                tmp / f"local-{model_name}",
                batch,
                shard_size,
                "local",
                RayOptions(),
            )
            figures["ray"], figures["ray steady"], _ = engine(
                explainer,
                model,
                folder,
                tmp / f"ray-{model_name}",
                batch,
                shard_size,
                "ray",
                RayOptions(actors=actors),
            )
            h, w = explainer.manifest.activation_shape[1:]
            full = explainer.input_size[1] * explainer.input_size[2] * 4
            rows.append((f"{model_name} (batch {batch})", count, figures, stored, (h, w), full))
            line = "  ".join(f"{name} {value:7.1f}" for name, value in figures.items())
            print(
                f"{model_name:9s} {count:5d} images  {line} images/s  stored {stored:.0f} B/image", flush=True
            )
    ray.shutdown()
    load = open("/proc/loadavg").read().split()[:3]
    print()
    print(f"{cores} cores, {SHARDS} shards, {METHOD}, ray: {actors} actors x 1 CPU; load after: {load}")
    header = [
        "model",
        "images",
        "graph-bound img/s",
        "plain loop",
        "local engine (steady)",
        "ray engine (steady)",
        "local / graph (goal ≥ 0.9)",
        "ray / local (goal ≥ 0.8)",
        "stored bytes / image / method",
        "float32 input-size map",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model_name, count, f, stored, (h, w), full in rows:
        cells = [
            model_name,
            str(count),
            f"{f['graph']:.1f}",
            f"{f['loop']:.1f}",
            f"{f['local']:.1f} ({f['local steady']:.1f})",
            f"{f['ray']:.1f} ({f['ray steady']:.1f})",
            f"{f['local'] / f['graph']:.2f} ({f['local steady'] / f['graph']:.2f})",
            f"{f['ray'] / f['local']:.2f} ({f['ray steady'] / f['local steady']:.2f})",
            f"{stored:.0f} (float16 {h}×{w})",
            f"{full} B",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
