"""``camserve serve``: the gRPC explanation service.

    camserve serve                                   # the embedded default model on 127.0.0.1:50051
    camserve serve --models ./models --host 0.0.0.0 --port 50051
    camserve serve --tls-cert server.pem --tls-key server.key --auth-token-file token.txt
    camserve serve --workers 4 --metrics-port 9090   # 4 processes on one port, /metrics summed

Every model directory under --models is served under its directory's name. Flags override the
configuration (file given with --config, then CAMSERVE_* variables, then these flags).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from camserve.config import CamserveConfig

# flag -> (config section, field); flags left unset keep the configured value.
_FLAGS: dict[str, tuple[str, str]] = {
    "models": ("service", "models"),
    "host": ("service", "host"),
    "port": ("service", "port"),
    "max_batch_size": ("service", "max_batch_size"),
    "max_queue_delay_ms": ("service", "max_queue_delay_ms"),
    "max_queue_size": ("service", "max_queue_size"),
    "max_message_bytes": ("service", "max_message_bytes"),
    "grace_period_s": ("service", "grace_period_s"),
    "metrics_port": ("service", "metrics_port"),
    "workers": ("service", "workers"),
    "tls_cert": ("service", "tls_cert"),
    "tls_key": ("service", "tls_key"),
    "tls_client_ca": ("service", "tls_client_ca"),
    "auth_token_file": ("service", "auth_token_file"),
    "device": ("runtime", "device"),
    "kernels": ("runtime", "kernels"),
    "intra_op_threads": ("runtime", "intra_op_threads"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve CAM explanations over gRPC",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--models", metavar="DIR", help="directory of model directories (default: the default model)"
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    parser.add_argument("--max-batch-size", type=int, help="images coalesced into one run")
    parser.add_argument("--max-queue-delay-ms", type=float, help="longest wait for a fuller batch")
    parser.add_argument(
        "--max-queue-size", type=int, help="images waiting per model before RESOURCE_EXHAUSTED"
    )
    parser.add_argument("--max-message-bytes", type=int, help="largest request or response message")
    parser.add_argument("--grace-period-s", type=float, help="time requests in flight get on shutdown")
    parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: none)")
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, each with cores/N threads "
        "(default 0: one per two cores, 1 on CUDA)",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain): serve TLS only")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)"
    )
    parser.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="require `authorization: Bearer <token>` with the token in FILE "
        "(or set CAMSERVE_SERVICE_AUTH_TOKEN)",
    )
    parser.add_argument(
        "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (checked with the configuration)"
    )
    parser.add_argument("--kernels", choices=("auto", "triton", "torch"))
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per run (0: all cores)")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> CamserveConfig:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, name) in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.setdefault(section, {})[name] = value
    return CamserveConfig.load(args.config, overrides=overrides)


def model_directories(config: CamserveConfig) -> dict[str, Path]:
    """Name -> model directory: everything under service.models, or the embedded default model."""
    from camserve.service.models import discover_models

    if config.service.models:
        return discover_models(config.service.models)
    from camserve.default_model import default_model_dir
    from camserve.modeldir import ModelDirectory

    path = Path(default_model_dir(cache_dir=config.runtime.cache_dir))
    # Its cache folder is named after the weights' checksum; clients know it by its manifest name.
    return {ModelDirectory(path, verify=False).name: path}


def run(args: argparse.Namespace) -> int:
    from camserve.runtime import check_device
    from camserve.service.models import ModelRegistry
    from camserve.service.server import check_service_config, serve
    from camserve.service.workers import WorkerPool, apply_thread_budget, default_workers

    config = config_from_args(args)
    check_service_config(config.service)  # before the models load
    check_device(config.runtime.device)
    workers = config.service.workers or default_workers(config)
    if workers > 1:
        return WorkerPool(config, model_directories(config), workers).run()
    apply_thread_budget(config)
    models = ModelRegistry.load(model_directories(config), config)
    asyncio.run(serve(config, models))  # ends the process after the shutdown
    return 0
