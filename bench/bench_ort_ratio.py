"""camserve's graph path (``OnnxGraphRunner``: IO binding on torch buffers) against a plain
``onnxruntime.InferenceSession.run`` of the same explain graph, on the CPU, in one run.

Prints which ONNX Runtime distribution is installed (onnxruntime or onnxruntime-gpu: both run CPU
sessions), the median milliseconds of each path and camserve ÷ plain. Run it in two environments to
compare the two wheels' CPU speed. Usage: python bench/bench_ort_ratio.py [--batch 16] [--repeats 30]
"""

from __future__ import annotations

import argparse
import importlib.metadata

import onnxruntime as ort
import torch
from timing import median_seconds

from camserve.config import CamserveConfig, RuntimeConfig
from camserve.default_model import default_model_dir
from camserve.modeldir import ModelDirectory
from camserve.runtime import OnnxGraphRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ModelDirectory(default_model_dir(cache_dir=CamserveConfig.load(env={}).runtime.cache_dir))
    runner = OnnxGraphRunner(model, RuntimeConfig(device="cpu", intra_op_threads=args.threads))
    images = torch.rand(args.batch, *runner.input_size)
    targets = torch.full((args.batch, 1), -1, dtype=torch.int64)
    options = ort.SessionOptions()  # as camserve configures its sessions
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    plain = ort.InferenceSession(
        str(model.graph_path("explain")), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"images": images.numpy(), "targets": targets.numpy()}
    plain_ms = 1e3 * median_seconds(lambda: plain.run(None, feeds), args.repeats)
    camserve_ms = 1e3 * median_seconds(lambda: runner.explain(images, targets), args.repeats)
    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    ratio = camserve_ms / plain_ms
    print(
        f"{', '.join(installed)}: default model, batch {args.batch}, {args.threads} threads: plain ONNX "
        f"Runtime {plain_ms:.2f} ms, camserve {camserve_ms:.2f} ms, camserve / plain {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
