"""The gRPC server: ExplainService, the Open Inference Protocol's inference.GRPCInferenceService,
grpc.health.v1.Health (one entry per model, plus "" overall) and server reflection on one grpc.aio
server, with graceful shutdown on SIGTERM / SIGINT. TLS / mTLS and the bearer-token check are set up
here from ServiceConfig (camserve.service.security).

Shutdown: health goes NOT_SERVING, new Explain requests get UNAVAILABLE, requests in flight finish
(at most ServiceConfig.grace_period_s), then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from camserve.config import CamserveConfig, ServiceConfig
from camserve.config import check_service_config as check_service_values
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
# After the last Explain request finished, long-lived streams (health Watch) get this long to end.
FINAL_GRACE_S = 1.0


class ExplainServer:
    """One server; ``start()`` then ``wait_for_shutdown_signal()`` or ``stop()``."""

    def __init__(self, config: CamserveConfig, models: ModelRegistry, worker: int | None = None) -> None:
        """``worker``: this server's index among ``serve --workers`` processes sharing its port."""
        self.config = config
        self.models = models
        service = config.service
        self.dataplane = DataPlane(models, config)  # the one request path of both APIs
        self.servicer = ExplainServicer(self.dataplane, service.max_batch_size)
        self.health = health_aio.HealthServicer()
        token = load_token(service)
        # The token check runs first: a caller without a valid token gets nothing parsed.
        guard = RequestGuardInterceptor(service.stream_max_unread)
        self.server = grpc.aio.server(
            interceptors=[BearerTokenInterceptor(token), guard] if token else [guard],
            options=[
                ("grpc.max_send_message_length", service.max_message_bytes),
                ("grpc.max_receive_message_length", service.max_message_bytes),
                # A second server on the same port must fail, not share it; workers share it on purpose
                # (camserve.service.workers holds the port and refuses one already taken).
                ("grpc.so_reuseport", 0 if worker is None else 1),
            ],
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
            log.warning("grace period over: cancelling the requests still in flight")
        remaining = max(0.0, grace - (time.monotonic() - started))
        await self.server.stop(min(FINAL_GRACE_S, remaining))
        await self.models.close()
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


def check_service_config(service: ServiceConfig) -> None:
    """InvalidArgumentError / NotFoundError naming the setting the server cannot run with: the values
    (``camserve.config.check_service_config``), then the files they name."""
    check_service_values(service)
    check_security_files(service)


async def serve(config: CamserveConfig, models: ModelRegistry) -> None:
    """Run a server until SIGTERM / SIGINT."""
    server = ExplainServer(config, models)
    await server.start()
    await server.wait_for_shutdown_signal()
