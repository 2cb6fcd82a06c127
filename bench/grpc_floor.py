#!/usr/bin/env python
"""What a Python gRPC call costs the server before any CAM work: the floor under `camserve serve`.

    python bench/grpc_floor.py                      # 1 and 16 clients, default model
    python bench/grpc_floor.py --concurrency 16 --json floor.json

Three servers answer the same load from `camserve bench` (camserve.v1 Explain, one 64x64 PNG per
request, Grad-CAM, target -1), one after the other:

* ``null``: a bare grpc.aio server whose Explain returns a fixed, real ExplainResponse (the answer
  `camserve serve` gives for the first request, same bytes on the wire) without reading the request:
  grpc.aio, HTTP/2 and protobuf alone;
* ``null+guard``: the same with camserve's RequestGuardInterceptor (parsing, call scope, backpressure);
* ``camserve``: `camserve serve` itself (default settings).

Each server's CPU seconds (utime + stime of its process, from /proc) over the whole bench run, warm-up
included, are divided by the requests it answered. With the in-process Explainer's CPU per image on
the same work (``camserve bench --in-process``, printed for the camserve row), the ratio
null ÷ in-process says how much of the serving overhead no code of camserve's can remove.
Prints its figures (not a test); docs/bench.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camserve.loadgen.local_server import LocalServer, free_port  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sample_answers() -> tuple[bytes, bytes]:
    """The ExplainResponse `camserve serve` gives for the bench's first request, and the model's
    ModelInfo (serialised)."""
    from camserve.commands.serve import model_directories
    from camserve.config import CamserveConfig
    from camserve.loadgen.workload import png_bytes, sample_images
    from camserve.service.codec import model_info
    from camserve.service.dataplane import DataPlane
    from camserve.service.models import ModelRegistry
    from camserve.service.servicer import EXPLAIN
    from camserve.v1 import camserve_pb2 as pb

    config = CamserveConfig()

    async def answer() -> tuple[bytes, bytes]:
        models = ModelRegistry.load(model_directories(config), config)
        models.start()
        request = pb.ExplainRequest(
            model="digits",
            methods=["gradcam"],
            images=[pb.Image(encoded=png_bytes(sample_images(1)[0]), targets=[-1])],
        )
        outcome = await DataPlane(models, config).handle(EXPLAIN, request, None)
        assert outcome.response is not None, outcome.message
        info = model_info(models.get("digits"), config.service.max_batch_size)
        return outcome.response.SerializeToString(), info.SerializeToString()

    return asyncio.run(answer())


def serve_null(port: int, guard: bool, answers: Path) -> None:
    """The null server (run in a child process): Explain returns the stored answer."""
    import grpc

    from camserve.service.interceptors import RequestGuardInterceptor
    from camserve.v1 import camserve_pb2 as pb
    from camserve.v1 import camserve_pb2_grpc as pb_grpc

    response = pb.ExplainResponse.FromString((answers / "response.bin").read_bytes())
    info = pb.ModelInfo.FromString((answers / "info.bin").read_bytes())

    class Null(pb_grpc.ExplainServiceServicer):
        async def Explain(
            self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
        ) -> pb.ExplainResponse:
            return response

        async def ListModels(
            self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
        ) -> pb.ListModelsResponse:
            return pb.ListModelsResponse(models=[info])

        async def GetModel(
            self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
        ) -> pb.ModelInfo:
            return info

    async def main() -> None:
        server = grpc.aio.server(interceptors=[RequestGuardInterceptor(4)] if guard else [])
        pb_grpc.add_ExplainServiceServicer_to_server(Null(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"camserve listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def run_bench(address: str, concurrency: int, extra: list[str], out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "camserve.cli", "bench", "--server", address, "--model", "digits",
        "--concurrency", str(concurrency), "--warmup-s", "2", "--window-s", "3", "--max-windows", "5",
        "--json", str(out), *extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["levels"][0]["summary"]


def measure(name: str, pid: int, address: str, concurrency: int, extra: list[str], tmp: Path) -> dict:
    before = _cpu_s(pid)
    level = run_bench(address, concurrency, extra, tmp / f"{name}-{concurrency}.json")
    cpu = _cpu_s(pid) - before
    row = {
        "server": name,
        "clients": concurrency,
        "img_per_s": level["throughput"],
        "p50_ms": level["p50_ms"],
        "cpu_ms_per_request": 1e3 * cpu / max(1, level["sent"]),
    }
    if "in_process_cpu_s_per_image" in level:
        row["in_process_cpu_ms_per_image"] = 1e3 * level["in_process_cpu_s_per_image"]
        row["in_process_img_per_s"] = level["in_process_images_per_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16", help="client counts (comma-separated)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--serve-null", nargs=3, metavar=("PORT", "GUARD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_null:
        port, guard, answers = args.serve_null
        serve_null(int(port), guard == "1", Path(answers))
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        response, info = _sample_answers()
        (tmp / "response.bin").write_bytes(response)
        (tmp / "info.bin").write_bytes(info)
        for name, guard in (("null", "0"), ("null+guard", "1")):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve-null", str(port), guard, str(tmp)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None and "listening" in proc.stdout.readline()
                for c in levels:
                    rows.append(measure(name, proc.pid, f"127.0.0.1:{port}", c, [], tmp))
            finally:
                proc.terminate()
                proc.wait()
        with LocalServer(None, [], tmp / "serve.log") as server:
            for c in levels:
                rows.append(measure("camserve", server.proc.pid, server.address, c, ["--in-process"], tmp))
    header = ("server", "clients", "img/s", "p50 ms", "server CPU ms/request", "in-process CPU ms/img")
    print("{:<12}{:>8}{:>9}{:>9}{:>23}{:>23}".format(*header))
    for r in rows:
        inproc = f"{r['in_process_cpu_ms_per_image']:.3f}" if "in_process_cpu_ms_per_image" in r else "-"
        print(
            f"{r['server']:<12}{r['clients']:>8}{r['img_per_s']:>9.1f}{r['p50_ms']:>9.2f}"
            f"{r['cpu_ms_per_request']:>23.3f}{inproc:>23}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
