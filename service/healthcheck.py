"""Exit 0 when a camserve server reports SERVING through grpc.health.v1, 1 otherwise: the container
health check.

    python -m camserve.service.healthcheck                      # the configured port on this host
    python -m camserve.service.healthcheck --address host:port --service digits
    python -m camserve.service.healthcheck --tls-ca ca.pem --tls-cert client.pem --tls-key client.key

Without --address it reads the configuration (CAMSERVE_* variables, --config FILE) like the server
does, so the same environment gives the same port. When the configuration turns TLS on, the check
speaks TLS too: it verifies the server against --tls-ca (default: the server's own service.tls_cert,
which suits self-signed certificates) and, for mTLS, presents --tls-cert / --tls-key. The health service
needs no bearer token.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.config import CamserveConfig, ServiceConfig
from camserve.wire import open_channel

# A server listening on every interface is reached through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]", "": "127.0.0.1"}


def local_address(service: ServiceConfig) -> str:
    return f"{_WILDCARDS.get(service.host, service.host)}:{service.port}"


def check(
    address: str,
    service: str = "",
    timeout_s: float = 3.0,
    *,
    tls: bool = False,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> str:
    """The serving status name (SERVING, NOT_SERVING, ...), or the gRPC error code name."""
    channel = open_channel(address, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    with channel:
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
    parser.add_argument("--tls-ca", help="PEM certificate(s) that verify the server (turns TLS on)")
    parser.add_argument("--tls-cert", help="client certificate, for servers that require one (mTLS)")
    parser.add_argument("--tls-key", help="key of --tls-cert")
    args = parser.parse_args(argv)
    configured = CamserveConfig.load(args.config).service
    address = args.address or local_address(configured)
    tls = bool(configured.tls_cert or args.tls_ca or args.tls_cert)
    ca_file = args.tls_ca or configured.tls_cert or None
    status = check(
        address,
        args.service,
        args.timeout,
        tls=tls,
        ca_file=ca_file,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
    )
    sys.stdout.write(f"{address} {args.service or '(overall)'}: {status}\n")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
