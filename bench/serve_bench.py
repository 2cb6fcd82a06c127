#!/usr/bin/env python
"""Throughput and latency of `camserve serve` under concurrent clients, next to the in-process
Explainer's throughput on batches of the same size.

    python bench/serve_bench.py                                  # starts a server on the default model
    python bench/serve_bench.py --server 127.0.0.1:50051 --model digits --seconds 10
    python bench/serve_bench.py --concurrency 1,4,16 --methods gradcam,gradcam++ --json out.json

Each of C clients (its own channel) sends one PNG image per request, back to back, for --seconds
after --warmup seconds. For each C the in-process figure is Explainer.explain on batches of
min(C, max batch size) images decoded from the same PNGs, i.e. the same work without gRPC. Bounded in
time: about (warmup + seconds) x 2 per concurrency level, plus the server's start.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from server_process import start_server

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

IMAGES = 64  # distinct images cycled through by the clients


@dataclass
class Level:
    concurrency: int
    requests: int
    grpc_images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    batch_size: int
    in_process_images_per_s: float

    @property
    def ratio(self) -> float:
        return self.grpc_images_per_s / self.in_process_images_per_s if self.in_process_images_per_s else 0.0


def test_images(count: int) -> list[bytes]:
    """PNG bytes of the default model's test images (the digits task), 64x64."""
    import torch

    from camserve.default_model.data import make_localisation_dataset

    dataset = make_localisation_dataset(count, seed=1234, split="test")
    pixels = (dataset.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


async def run_level(
    address: str,
    model: str,
    methods: list[str],
    pngs: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
) -> tuple[int, float, list[float], int]:
    """(requests completed in the window, window length, their latencies in s, errors)."""
    requests = [
        pb.ExplainRequest(model=model, methods=methods, images=[pb.Image(encoded=png)]).SerializeToString()
        for png in pngs
    ]
    channels = [grpc.aio.insecure_channel(address) for _ in range(concurrency)]
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        # Pre-serialised requests: the load generator spends its CPU on gRPC, not on protobuf.
        call = channels[i].unary_unary(
            "/camserve.v1.ExplainService/Explain",
            request_serializer=lambda b: b,
            response_deserializer=pb.ExplainResponse.FromString,
        )
        n = i
        while (now := time.perf_counter()) < window_end:
            try:
                await call(requests[n % len(requests)], timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
            done = time.perf_counter()
            if now >= window_start and done <= window_end:
                latencies.append(done - now)
            n += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    return len(latencies), seconds, latencies, errors


def in_process_throughput(
    explainer, methods: list[str], pngs: list[bytes], batch: int, warmup: float, seconds: float
) -> float:
    """Images/s of decode + Explainer.explain on batches of ``batch`` images, back to back."""
    done, n, start = 0, 0, time.perf_counter()
    window_start = start + warmup
    counted_from = None
    while time.perf_counter() < window_start + seconds:
        chunk = [pngs[(n + k) % len(pngs)] for k in range(batch)]
        pixels = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in chunk]
        explainer.explain(pixels, methods=methods)
        n += batch
        now = time.perf_counter()
        if now >= window_start:
            if counted_from is None:
                counted_from = now
            else:
                done += batch
    elapsed = time.perf_counter() - (counted_from or time.perf_counter())
    return done / elapsed if elapsed > 0 else 0.0


def batch_sizes(log_text: str) -> list[int]:
    return [int(m) for m in re.findall(r"batch_size=(\d+)", log_text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="host:port of a running server (default: start one)")
    parser.add_argument(
        "--models", help="models root for the server started here (default: the default model)"
    )
    parser.add_argument("--model", help="model name (default: the server's only model)")
    parser.add_argument(
        "--model-dir", help="model directory for the in-process figures (default: the served one)"
    )
    parser.add_argument("--methods", default="gradcam", help="comma-separated CAM methods")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    parser.add_argument("--server-flag", action="append", default=[], help="extra `camserve serve` flag")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    methods = args.methods.split(",")

    from camserve.config import CamserveConfig
    from camserve.explainer import Explainer

    pngs = test_images(IMAGES)
    proc, log_path = None, Path(tempfile.mkdtemp(prefix="serve-bench-")) / "serve.log"
    address = args.server
    if address is None:
        proc, address = start_server(
            args.models, [f for flag in args.server_flag for f in flag.split()], log_path
        )
    try:
        with grpc.insecure_channel(address) as channel:
            listed = pb_grpc.ExplainServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
        info = next((m for m in listed if m.name == args.model), listed[0] if len(listed) == 1 else None)
        if info is None:
            raise SystemExit(f"choose --model among {', '.join(m.name for m in listed)}")
        model_dir = args.model_dir
        if model_dir is None:
            if args.server is not None:
                raise SystemExit("--model-dir is needed with --server (for the in-process figures)")
            if args.models:
                model_dir = str(Path(args.models) / info.name)
        explainer = Explainer(model_dir, config=CamserveConfig.load())
        results = []
        for concurrency in levels:
            seen = len(batch_sizes(log_path.read_text())) if proc else 0
            count, window, latencies, errors = asyncio.run(
                run_level(address, info.name, methods, pngs, concurrency, args.warmup, args.seconds)
            )
            sizes = batch_sizes(log_path.read_text())[seen:] if proc else []
            batch = min(concurrency, info.max_batch_size)
            local = in_process_throughput(explainer, methods, pngs, batch, args.warmup / 2, args.seconds / 2)
            ms = np.percentile(np.asarray(latencies) * 1e3, [50, 90, 99]) if latencies else [0.0] * 3
            results.append(
                Level(
                    concurrency,
                    count,
                    count / window,
                    *(float(v) for v in ms),
                    errors,
                    int(np.median(sizes)) if sizes else 0,
                    local,
                )
            )
            r = results[-1]
            print(
                f"C={concurrency:3d}  grpc {r.grpc_images_per_s:8.1f} img/s  p50 {r.p50_ms:7.2f} ms  "
                f"p90 {r.p90_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  errors {errors:3d}  "
                f"median batch {r.batch_size:3d}  | in-process batch {batch:3d}: {local:8.1f} img/s  "
                f"ratio {r.ratio:5.2f}",
                flush=True,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "ratio": r.ratio} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
