"""The gRPC server: ExplainService, the Open Inference Protocol's inference.GRPCInferenceService,
grpc.health.v1.Health (one entry per model, plus "" overall) and server reflection on one grpc.aio
server, with graceful shutdown on SIGTERM / SIGINT. TLS / mTLS and the bearer-token check are set up
here from ServiceConfig (camserve.service.security).

Shutdown: health goes NOT_SERVING, new Explain requests get UNAVAILABLE, requests in flight finish
(at most ServiceConfig.grace_period_s); then every call still open (streams, health watches, requests
past the grace period) ends UNAVAILABLE with a log line, the server stops and the process exits, within
the grace period plus FINAL_GRACE_S.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from camserve.config import CamserveConfig, ServiceConfig
from camserve.config import check_service_config as check_service_values
from camserve.defaults import MAX_HEALTH_SERVICE_CHARS
from camserve.errors import InvalidArgumentError
from camserve.service.dataplane import DataPlane
from camserve.service.interceptors import RequestGuardInterceptor
from camserve.service.metrics import serve_metrics
from camserve.service.models import ModelRegistry, return_freed_buffers_to_the_system
from camserve.service.security import (
    BearerTokenInterceptor,
    check_security_files,
    load_token,
    server_credentials,
    warn_if_exposed,
)
from camserve.service.servicer import ExplainServicer
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

EXPLAIN_SERVICE = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name
# After the last request finished or the grace period ended: the time to end open calls with
# UNAVAILABLE, stop gRPC and the batchers (the process exits within the grace period plus this).
FINAL_GRACE_S = 1.0
# When the process exits after the shutdown: how long refusals get to reach the wire before it does.
EXIT_FLUSH_S = 0.1


class ExplainServer:
    """One server; ``start()`` then ``wait_for_shutdown_signal()`` or ``stop()``."""

    def __init__(self, config: CamserveConfig, models: ModelRegistry, worker: int | None = None) -> None:
        """``worker``: this server's index among ``serve --workers`` processes sharing its port."""
        self.config = config
        self.models = models
        # set by the process entry points that end the process after the shutdown (exit_now)
        self.exits_after_stop = False
        service = config.service
        self.dataplane = DataPlane(models, config)  # the one request path of both APIs
        self.servicer = ExplainServicer(self.dataplane, service.max_batch_size)
        self.health = BoundedHealthServicer()
        token = load_token(service)
        # The token check runs first: a caller without a valid token gets nothing parsed.
        guard = RequestGuardInterceptor(service.stream_max_unread)
        self.calls = guard.calls
        self.server = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(token), guard] if token else [guard],
            options=transport_options(service, worker),
        )
        pb_grpc.add_ExplainServiceServicer_to_server(self.servicer, self.server)
        # Imported here, not at module level: see camserve.inference (tritonclient shares its names).
        from camserve.service.oip import INFERENCE_SERVICE, InferenceServicer, add_inference_service

        self.inference = InferenceServicer(self.dataplane, config)
        add_inference_service(self.server, self.inference)
        self.inference_service = INFERENCE_SERVICE
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                EXPLAIN_SERVICE,
                INFERENCE_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = 0
        self.worker = worker
        self._stopping: asyncio.Task[None] | None = None

    @property
    def health_names(self) -> list[str]:
        """Health service names: "" (overall), the API service and every model."""
        return ["", EXPLAIN_SERVICE, self.inference_service, *self.models.names]

    async def start(self) -> int:
        """Bind, start the batchers and the server, report SERVING; returns the bound port."""
        service = self.config.service
        check_service_config(service)
        return_freed_buffers_to_the_system()  # keeps the RSS bound of service.decode_pixel_budget
        address = f"{service.host}:{service.port}"
        credentials = server_credentials(service)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise InvalidArgumentError("service.port", f"cannot listen on {address} ({exc})") from None
        if self.port == 0:
            raise InvalidArgumentError("service.port", f"cannot listen on {address}")
        self.models.start()
        await self.server.start()
        for name in self.health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if service.metrics_port:
            serve_metrics(service.host, service.metrics_port)
        warn_if_exposed(service)
        log.info(
            "%s listening on %s:%d models=%s max_batch_size=%d max_queue_delay_ms=%g max_queue_size=%d"
            " tls=%s auth=%s",
            "camserve" if self.worker is None else f"camserve worker {self.worker}",
            service.host,
            self.port,
            ",".join(self.models.names),
            service.max_batch_size,
            service.max_queue_delay_ms,
            service.max_queue_size,
            ("mtls" if service.tls_client_ca else "on") if service.tls_cert else "off",
            "bearer-token" if service.auth_token or service.auth_token_file else "off",
        )
        return self.port

    async def stop(self) -> None:
        """Graceful shutdown; calling it again waits for the first call."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown())
        await self._stopping

    async def _shutdown(self) -> None:
        grace = self.config.service.grace_period_s
        started = time.monotonic()
        log.info("shutting down: NOT_SERVING, finishing requests in flight (grace %.1f s)", grace)
        await self.health.enter_graceful_shutdown()
        self.dataplane.draining = True
        try:
            await asyncio.wait_for(self.dataplane.wait_idle(), grace)
        except TimeoutError:
            log.warning("grace period over: ending the requests still in flight with UNAVAILABLE")
        # Streams, health watches and requests past the grace period end UNAVAILABLE with a log line
        # (grpc's stop would cancel them: CANCELLED, unlogged); calls arriving now are refused alike.
        self.dataplane.stopping = True
        ended = await self.calls.end_all(FINAL_GRACE_S * 0.25)
        if ended:
            log.info("ended %d open calls with UNAVAILABLE", ended)
        if self.exits_after_stop:
            # The process ends next (exit_now). gRPC's stop would cancel the calls it had accepted but
            # not yet handed to a handler (CANCELLED at the client, seen under steady load); the exit
            # closes the connections instead, which clients see as UNAVAILABLE. The pause lets the
            # refusals already answered reach the wire.
            await asyncio.sleep(EXIT_FLUSH_S)
        else:
            # GOAWAY: new calls are refused by gRPC itself; calls it took already still reach the
            # handlers (refused there, UNAVAILABLE) within this grace, after which gRPC cancels them.
            await self.server.stop(FINAL_GRACE_S * 0.5)
        try:
            await asyncio.wait_for(self.models.close(), FINAL_GRACE_S * 0.15)
        except TimeoutError:
            log.warning("a batch still running at exit is abandoned")
        log.info("stopped after %.2f s", time.monotonic() - started)

    async def wait_for_shutdown_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        received = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if received.is_set():
                log.info("%s: already shutting down", sig.name)
            received.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await received.wait()
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


#: Compression algorithms as gRPC core numbers them (identity 0, deflate 1, gzip 2), as a bit set.
_IDENTITY_ONLY = 0b001
_IDENTITY_DEFLATE_GZIP = 0b111


def transport_options(service: ServiceConfig, worker: int | None = None) -> list[tuple[str, int]]:
    """gRPC core's server options from ``service``: the limits that hold before any call is read."""
    return [
        # Also the inflated size of a compressed message: core stops inflating past it.
        ("grpc.max_send_message_length", service.max_message_bytes),
        ("grpc.max_receive_message_length", service.max_message_bytes),
        # Off by default: a 61 KB gzip body inflates to 60 MiB, and an unauthenticated caller needs no
        # more to cost the server that much. A compressed request gets UNIMPLEMENTED, uninflated.
        (
            "grpc.compression_enabled_algorithms_bitset",
            _IDENTITY_DEFLATE_GZIP if service.accept_compressed_requests else _IDENTITY_ONLY,
        ),
        # Advertised as SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it are refused (REFUSED_STREAM).
        ("grpc.max_concurrent_streams", service.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", service.max_connections),
        ("grpc.max_connection_idle_ms", round(service.connection_idle_timeout_s * 1000)),
        ("grpc.server_handshake_timeout_ms", round(service.handshake_timeout_s * 1000)),
        # A second server on the same port must fail, not share it; workers share it on purpose
        # (camserve.service.workers holds the port and refuses one already taken).
        ("grpc.so_reuseport", 0 if worker is None else 1),
    ]


class BoundedHealthServicer(health_aio.HealthServicer):
    """grpc.health.v1 whose Check and Watch refuse service names over MAX_HEALTH_SERVICE_CHARS with
    INVALID_ARGUMENT: the health service needs no token, and an open Watch holds its request."""

    async def Check(  # noqa: N802 - gRPC's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        await _refuse_long_name(request, context)
        return await super().Check(request, context)

    async def Watch(  # noqa: N802 - gRPC's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await _refuse_long_name(request, context)
        await super().Watch(request, context)


async def _refuse_long_name(
    request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
) -> None:
    if len(request.service) > MAX_HEALTH_SERVICE_CHARS:
        log.info(
            "health: refused a service name of %d characters from %s", len(request.service), context.peer()
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"service: at most {MAX_HEALTH_SERVICE_CHARS} characters, got {len(request.service)}",
        )


def check_service_config(service: ServiceConfig) -> None:
    """InvalidArgumentError / NotFoundError naming the setting the server cannot run with: the values
    (``camserve.config.check_service_config``), then the files they name."""
    check_service_values(service)
    check_security_files(service)


async def serve(config: CamserveConfig, models: ModelRegistry) -> None:
    """Run a server until SIGTERM / SIGINT, then end the process (``exit_now``): `camserve serve`."""
    server = ExplainServer(config, models)
    server.exits_after_stop = True
    await server.start()
    await server.wait_for_shutdown_signal()
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """End the process at once after a shutdown: the interpreter's own teardown (worker threads
    still decoding or running a graph, ONNX Runtime, torch) took 5 s and more after "stopped", past
    the grace period that orchestrators wait for before SIGKILL."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
