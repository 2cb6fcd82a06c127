"""``camserve bench``: latency and throughput of a camserve server under load (closed or open loop),
with the server's own split of the time and, with --in-process, the same work done in-process.

    camserve bench                                          # starts a server on the default model
    camserve bench --concurrency 1,4,16 --in-process --json bench.json --plot bench.png
    camserve bench --server 127.0.0.1:50051 --metrics-url 127.0.0.1:9090 --model resnet50 \\
        --image-size 224x224 --request-rate 2,4 --arrivals poisson
    camserve bench --api oip --method gradcam --method gradcam++ --target -1 --target -2

Each level runs a warm-up, then measurement windows until the last --stable-windows windows'
throughputs agree within --tolerance (at most --max-windows windows); figures are those windows'.
Open-loop latency counts from each request's scheduled send time. Without --server a server is
started here (--models, --server-flag) with a Prometheus endpoint for the server-side columns.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from camserve.cli_flags import (
    add_method_flag,
    add_remote_flags,
    add_target_flag,
    check_remote_flags,
    client_token,
)
from camserve.defaults import DEFAULT_METHODS
from camserve.errors import InvalidArgumentError

DEFAULT_CONCURRENCY = "1,4,16"
DEFAULT_IMAGES = 64  # distinct images the clients cycle through
DEFAULT_MAX_BATCH = 16  # a server that does not say (Triton): in-process batches when its metrics do not


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure a server's latency and throughput under load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    target = parser.add_argument_group("server")
    target.add_argument("--server", metavar="HOST:PORT", help="a running server (default: start one here)")
    target.add_argument("--model", metavar="NAME", help="model name (default: the server's only model)")
    target.add_argument(
        "--metrics-url",
        metavar="URL",
        help="the server's Prometheus endpoint (default: the started server's)",
    )
    target.add_argument("--models", metavar="DIR", help="without --server: models of the started server")
    target.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAGS",
        help="without --server: extra `camserve serve` flags, e.g. '--workers 2'",
    )
    add_remote_flags(parser)
    work = parser.add_argument_group("requests")
    work.add_argument(
        "--api",
        choices=("explain", "stream", "oip"),
        default="explain",
        help="camserve.v1 Explain, ExplainStream, or Open Inference Protocol ModelInfer (default explain)",
    )
    add_method_flag(work)
    add_target_flag(work)
    images = work.add_mutually_exclusive_group()
    images.add_argument(
        "--images", metavar="DIR", help="image files to send (default: the default model's samples)"
    )
    images.add_argument("--image-size", metavar="HxW", help="send generated images of this size")
    work.add_argument(
        "--image-count", type=int, default=DEFAULT_IMAGES, help=f"distinct images (default {DEFAULT_IMAGES})"
    )
    work.add_argument("--timeout-s", type=float, default=60.0, help="deadline of each request (default 60)")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        metavar="LIST",
        help=f"closed loop: clients per level (default {DEFAULT_CONCURRENCY})",
    )
    load.add_argument("--request-rate", metavar="LIST", help="open loop: requests per second per level")
    load.add_argument(
        "--arrivals", choices=("constant", "poisson"), default="constant", help="open-loop arrivals"
    )
    load.add_argument("--processes", type=int, help="client processes (default: half the cores, at most 8)")
    load.add_argument("--seed", type=int, default=0, help="Poisson arrivals' seed")
    windows = parser.add_argument_group("measurement")
    windows.add_argument(
        "--warmup-s", type=float, default=2.0, help="unmeasured seconds per level (default 2)"
    )
    windows.add_argument("--window-s", type=float, default=2.0, help="measurement window (default 2)")
    windows.add_argument(
        "--tolerance", type=float, default=0.1, help="stable: windows' throughputs within this fraction (0.1)"
    )
    windows.add_argument("--stable-windows", type=int, default=3, help="windows that must agree (default 3)")
    windows.add_argument("--max-windows", type=int, default=8, help="windows per level at most (default 8)")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--in-process",
        action="store_true",
        help="also run the Explainer in-process on the same work (ratios)",
    )
    out.add_argument(
        "--model-dir",
        metavar="DIR",
        help="with --server: the model's directory (--in-process; --api oip on Triton: preprocessing, maps)",
    )
    out.add_argument("--csv", metavar="FILE", help="write one row per level")
    out.add_argument("--json", metavar="FILE", help="write settings and every figure")
    out.add_argument("--plot", metavar="FILE.png", help="write latency against throughput")
    parser.set_defaults(func=run)


def positive_list(text: str, flag: str, integer: bool) -> list[float]:
    """``"1,4,16"`` -> [1, 4, 16]; InvalidArgumentError naming the flag otherwise."""
    values: list[float] = []
    for part in text.split(","):
        try:
            value = int(part) if integer else float(part)
        except ValueError:
            kind = "whole numbers" if integer else "numbers"
            raise InvalidArgumentError(flag, f"expected comma-separated {kind}, got {text!r}") from None
        if not value > 0:
            raise InvalidArgumentError(flag, f"values must be > 0, got {part!r}")
        values.append(value)
    return values


def _check_args(args: argparse.Namespace) -> None:
    check_remote_flags(args)
    for flag, value in (("--models", args.models), ("--server-flag", args.server_flag)):
        if value and args.server:
            raise InvalidArgumentError(flag, "starts a server here; not with --server")
    if args.image_size:
        from camserve.loadgen.workload import parse_size

        parse_size(args.image_size)
    if args.model_dir and not (args.in_process or args.api == "oip"):
        raise InvalidArgumentError("--model-dir", "is for --in-process or --api oip")
    positive = {
        "--image-count": args.image_count,
        "--timeout-s": args.timeout_s,
        "--window-s": args.window_s,
        "--stable-windows": args.stable_windows,
        "--max-windows": args.max_windows,
        "--processes": args.processes if args.processes is not None else 1,
    }
    for flag, value in positive.items():
        if not value > 0:
            raise InvalidArgumentError(flag, f"must be > 0, got {value}")
    if not args.warmup_s >= 0:
        raise InvalidArgumentError("--warmup-s", f"must be >= 0, got {args.warmup_s}")
    if not 0 < args.tolerance < 1:
        raise InvalidArgumentError("--tolerance", f"must be a fraction in (0, 1), got {args.tolerance}")
    if args.max_windows < args.stable_windows:
        raise InvalidArgumentError("--max-windows", f"must be >= --stable-windows ({args.stable_windows})")
    for flag in ("csv", "json", "plot"):
        value = getattr(args, flag)
        if value and not Path(value).parent.is_dir():
            raise InvalidArgumentError(f"--{flag}", f"directory {Path(value).parent} does not exist")


def levels(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(mode, level) pairs: the closed-loop levels, then the open-loop ones."""
    closed = args.concurrency or (None if args.request_rate else DEFAULT_CONCURRENCY)
    out = [("closed", v) for v in positive_list(closed, "--concurrency", True)] if closed else []
    if args.request_rate:
        out += [("open", v) for v in positive_list(args.request_rate, "--request-rate", False)]
    return out


def default_processes() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    plan = levels(args)
    from camserve.loadgen.local_server import LocalServer

    with tempfile.TemporaryDirectory(prefix="camserve-bench-") as tmp:
        server = None
        if args.server is None:
            flags = [f for flag in args.server_flag for f in flag.split()]
            print("starting a server ...", file=sys.stderr, flush=True)
            server = LocalServer(args.models, flags, Path(tmp) / "serve.log")
        try:
            return _bench(args, plan, server)
        finally:
            if server is not None:
                server.stop()


def _bench(args: argparse.Namespace, plan: list[tuple[str, float]], server: Any) -> int:
    from camserve.loadgen import report
    from camserve.loadgen.clients import Target
    from camserve.loadgen.server_metrics import MetricsReader
    from camserve.loadgen.sweep import WindowPolicy, run_level
    from camserve.loadgen.workload import build_workload, parse_size

    size = parse_size(args.image_size) if args.image_size else None
    address = args.server or server.address
    target = Target(
        address, args.tls, args.ca_file, args.client_cert, args.client_key, client_token(args), args.timeout_s
    )
    served = _served_models(args, address, target)
    model = args.model
    if model is None:
        if served is None:
            raise InvalidArgumentError(
                "--model", "the server is not camserve (no ListModels): name the model"
            )
        if len(served) != 1:
            raise InvalidArgumentError(
                "--model", f"the server holds several models; choose one of {', '.join(served)}"
            )
        model = next(iter(served))
    elif served is not None and model not in served:
        print(f"note: the server does not serve {model!r} (it serves {', '.join(served)})", file=sys.stderr)
    methods = tuple(args.methods or DEFAULT_METHODS)
    graph, manifest = None, None
    if args.api == "oip" and served is None:  # not camserve: what does the model take?
        from camserve.loadgen.oip import model_metadata
        from camserve.modeldir import ModelDirectory

        graph = model_metadata(target, model)
        known = _model_directory(args, model)
        manifest = ModelDirectory(known).manifest if known else None
    workload = build_workload(
        args.api,
        model,
        methods,
        tuple(args.targets or ()),
        args.image_count,
        args.images,
        size,
        graph,
        manifest,
    )
    metrics_url = args.metrics_url or (server.metrics_url if server else None)
    metrics = MetricsReader(metrics_url) if metrics_url else None
    if metrics:
        metrics.scrape()  # fail now, not after the first level
    policy = WindowPolicy(args.warmup_s, args.window_s, args.tolerance, args.stable_windows, args.max_windows)
    processes = args.processes or default_processes()
    settings = {
        "server": address,
        "started_here": server is not None,
        "server_flags": args.server_flag,
        "model": model,
        "api": args.api,
        "methods": list(methods),
        "targets": list(args.targets or []),
        "images": args.images or (f"generated {args.image_size}" if size else "default model samples"),
        "image_count": len(workload.requests),
        "processes": processes,
        "policy": asdict(policy),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
    }
    print(
        f"camserve bench: {address} model={model} api={args.api} methods={','.join(methods)} "
        f"images={settings['images']} load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    explainer = _in_process_explainer(args, model) if args.in_process else None
    max_batch = served[model] if served and model in served else DEFAULT_MAX_BATCH
    results = []
    for mode, level in plan:
        result = run_level(
            workload, target, mode, level, processes, policy, metrics, args.arrivals, args.seed
        )
        results.append(result)
        if explainer is not None:  # right after the level: the host's load is alike for both
            _in_process(explainer, result, workload, max_batch, args.window_s * args.stable_windows)
        m = result.measured
        print(
            f"  {mode} {level:g}: {m.throughput:.1f} img/s p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms"
            f"{'' if result.stable else ' (not stable)'}",
            file=sys.stderr,
            flush=True,
        )
    settings["load_average_after"] = list(os.getloadavg())
    print(report.table(results))
    print(
        f"load average before {settings['load_average_before'][0]:.2f}, "
        f"after {settings['load_average_after'][0]:.2f} ({os.cpu_count()} cores)"
    )
    if args.csv:
        print(f"wrote {report.write_csv(results, args.csv)}")
    if args.json:
        print(f"wrote {report.write_json(results, args.json, settings)}")
    if args.plot:
        print(f"wrote {report.plot(results, args.plot, f'{model} over {args.api}, {address}')}")
    return 0


def _served_models(args: argparse.Namespace, address: str, target: Any) -> dict[str, int] | None:
    """camserve's models and their max batch sizes (ListModels); None for an Open Inference Protocol
    server that is not camserve (Triton), which --api oip can measure too."""
    import grpc

    from camserve.client import Client, ServerError

    with Client(
        address,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.client_cert,
        key_file=args.client_key,
        token=target.token,
        timeout_s=30,
    ) as client:
        try:
            return {m.name: m.max_batch_size for m in client.list_models()}
        except ServerError as exc:
            if args.api == "oip" and exc.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise


def _model_directory(args: argparse.Namespace, model: str) -> str | None:
    """--model-dir, else the served model's directory when it is known here (the default model, or one
    under --models); None when unknown."""
    from camserve.commands.serve import model_directories
    from camserve.config import CamserveConfig

    if args.model_dir:
        return str(args.model_dir)
    config = CamserveConfig.load(args.config)
    known = model_directories(config.replace(service={"models": args.models or ""}))
    return str(known[model]) if model in known else None


def _in_process_explainer(args: argparse.Namespace, model: str) -> Any:
    """The Explainer of --in-process on the served model's directory (:func:`_model_directory`)."""
    from camserve.config import CamserveConfig
    from camserve.explainer import Explainer

    directory = _model_directory(args, model)
    if directory is None:
        raise InvalidArgumentError("--model-dir", f"needed for --in-process on model {model!r}")
    return Explainer(directory, config=CamserveConfig.load(args.config))


def _in_process(explainer: Any, result: Any, workload: Any, max_batch: int, seconds: float) -> None:
    """Explainer figures at the batch size the server ran for this level (its mean, rounded)."""
    from camserve.loadgen.in_process import measure

    server = result.server_measured
    if server is not None and server.batch_size:
        batch = max(1, round(server.batch_size))
    else:
        batch = min(int(result.level), max_batch) if result.mode == "closed" else 1
    print(f"  in-process batch {batch} ...", file=sys.stderr, flush=True)
    figures = measure(explainer, workload, batch, seconds)
    result.in_process = {
        "batch_size": batch,
        "images_per_s": figures.images_per_s,
        "cpu_s_per_image": figures.cpu_s_per_image,
        "batch_ms": figures.batch_ms,
    }
