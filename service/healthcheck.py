"""Exit 0 when a camserve server reports SERVING through grpc.health.v1, 1 otherwise: the container
health check.

    python -m camserve.service.healthcheck                      # the configured port on this host
    python -m camserve.service.healthcheck --address host:port --service digits

Without --address it reads the configuration (CAMSERVE_* variables, --config FILE) like the server
does, so the same environment gives the same port.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.config import CamserveConfig, ServiceConfig

# A server listening on every interface is reached through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]", "": "127.0.0.1"}


def local_address(service: ServiceConfig) -> str:
    return f"{_WILDCARDS.get(service.host, service.host)}:{service.port}"


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name (SERVING, NOT_SERVING, ...), or the gRPC error code name."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="host:port (default: from the configuration)")
    parser.add_argument("--service", default="", help='health service name: a model name, or "" for all')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--config", help="configuration file, as for `camserve --config`")
    args = parser.parse_args(argv)
    address = args.address or local_address(CamserveConfig.load(args.config).service)
    status = check(address, args.service, args.timeout)
    sys.stdout.write(f"{address} {args.service or '(overall)'}: {status}\n")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
