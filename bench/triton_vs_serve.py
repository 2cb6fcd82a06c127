"""`camserve serve` against Triton Inference Server serving the same model, in one run, both measured by
`camserve bench --api oip --in-process` (one image per call, closed loop):

  camserve serve   started by `camserve bench` (PIXELS uint8 [1,H,W,3], the server preprocesses)
  Triton           the PyPI tritonserver (nvidia-pytriton) on `camserve export --triton-repository`'s
                   repository of the model's maps graph (added to a copy if it has none), python
                   backend (model.py runs the graph with ONNX Runtime), requests
                   with the graph's own inputs (images float32 [1,3,H,W] preprocessed by the client,
                   targets int64), the maps graph's chosen maps only when the model has one

Each prints its table with the in-process Explainer figures of the same level (ratio = served ÷
in-process images/s). Usage:

  python bench/triton_vs_serve.py                               # default model, 1 and 16 clients
  python bench/triton_vs_serve.py --model-dir models/resnet50 --image-size 224x224 --image-count 16 \\
      --bench-flags "--warmup-s 5 --window-s 6 --max-windows 4"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from camserve.config import CamserveConfig
from camserve.default_model import default_model_dir
from camserve.export.triton_repository import write_triton_repository
from camserve.export.triton_server import TritonServer
from camserve.loadgen.local_server import free_port
from camserve.modeldir import ModelDirectory

BENCH_TIMEOUT_S = 1800


def bench(flags: list[str]) -> int:
    argv = [sys.executable, "-m", "camserve.cli", "bench", *flags]
    print("$", shlex.join(argv[1:]), flush=True)
    return subprocess.run(argv, timeout=BENCH_TIMEOUT_S).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="a model directory (default: the default model)")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--image-size", help="generated images of HxW (default: the default model's samples)")
    parser.add_argument("--image-count", default="64")
    parser.add_argument("--instances", type=int, default=1, help="Triton python-backend instances")
    parser.add_argument("--queue-delay-us", type=int, default=0, help="Triton max_queue_delay_microseconds")
    parser.add_argument("--bench-flags", default="--warmup-s 2 --window-s 2 --max-windows 6")
    args = parser.parse_args()
    model_dir = ModelDirectory(
        args.model_dir or default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir)
    )
    name = model_dir.name
    common = ["--api", "oip", "--in-process", "--concurrency", args.concurrency, "--method", args.method]
    common += ["--image-count", args.image_count, *shlex.split(args.bench_flags)]
    common += ["--image-size", args.image_size] if args.image_size else []
    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores), model {name}", flush=True)
    codes = []
    with tempfile.TemporaryDirectory(prefix="triton-vs-serve-") as tmp:
        served = []
        if args.model_dir:  # the default model is served without --models
            models = Path(tmp) / "models"
            models.mkdir()
            (models / name).symlink_to(model_dir.path.resolve())
            served = ["--models", str(models)]
        print("\n== camserve serve ==", flush=True)
        codes.append(bench([*common, *served, "--model", name]))
        if model_dir.manifest.maps is None:  # Triton serves the maps graph: add one to a copy
            from camserve.export.maps import MapsOptions, add_maps_graph

            copy = Path(tmp) / "with-maps" / name
            shutil.copytree(model_dir.path, copy)
            model_dir = add_maps_graph(copy, MapsOptions())
        repo = Path(tmp) / "triton"
        # No preferred sizes, no delay: a batch takes what queued while the instance was busy, as
        # camserve's batcher does (a delay would hold a lone request back at 1 client).
        write_triton_repository(
            model_dir,
            repo,
            instance_count=args.instances,
            instance_kind="KIND_CPU",
            max_queue_delay_us=args.queue_delay_us,
            preferred_batch_sizes=[],
        )
        ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
        print("\n== Triton Inference Server (python backend) ==", flush=True)
        with TritonServer(repo, **ports) as triton:
            triton.wait_ready()
            codes.append(
                bench(
                    [*common, "--server", triton.grpc, "--metrics-url", triton.metrics_url, "--model", name]
                    + ["--model-dir", str(model_dir.path)]
                )
            )
    print(f"load average after {os.getloadavg()[0]:.2f}", flush=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
