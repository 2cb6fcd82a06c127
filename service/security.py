"""Transport security and authentication: TLS / mTLS server credentials and the bearer-token
interceptor (the client side, channel credentials and tokens, is ``camserve.wire``).

Both are off by default (the server listens on 127.0.0.1). With ``service.tls_cert`` and
``service.tls_key`` the port speaks TLS only; ``service.tls_client_ca`` also requires a client
certificate signed by that CA (mTLS). With ``service.auth_token`` or ``service.auth_token_file`` every
call must carry ``authorization: Bearer <token>`` metadata, except the gRPC health service (container
and load-balancer probes carry no token; it reveals only serving status).

Wrong tokens are rate-limited per peer address (``FailedAuthLimiter``): after
``AUTH_FAILURE_BURST`` wrong tokens, an address gets one more try per ``AUTH_FAILURE_INTERVAL_S``;
until then every call from it that needs a token is refused with RESOURCE_EXHAUSTED without looking
at the token (also the right one: otherwise guessing would go on at full speed).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from camserve.config import ServiceConfig
from camserve.service import metrics
from camserve.service.interceptors import peer_host, with_precheck
from camserve.wire import AUTH_METADATA_KEY, BEARER, check_token, read_file, read_token_file

log = logging.getLogger(__name__)

#: Methods under these prefixes need no token.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
_LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")
#: Wrong tokens one peer address may send at full speed; then one more per AUTH_FAILURE_INTERVAL_S.
AUTH_FAILURE_BURST = 10
AUTH_FAILURE_INTERVAL_S = 1.0
_TRACKED_PEERS = 4096  # addresses remembered; the oldest are forgotten first


def check_security_files(service: ServiceConfig) -> None:
    """NotFoundError / InvalidArgumentError naming the setting whose certificate or token file cannot
    be used (the settings' values are checked by ``camserve.config.check_service_config``)."""
    for setting in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(service, setting):
            read_file(getattr(service, setting), f"service.{setting}")
    load_token(service)


def server_credentials(service: ServiceConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port; None when TLS is off."""
    if not service.tls_cert:
        return None
    key = read_file(service.tls_key, "service.tls_key")
    cert = read_file(service.tls_cert, "service.tls_cert")
    ca = read_file(service.tls_client_ca, "service.tls_client_ca") if service.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def load_token(service: ServiceConfig) -> str | None:
    """The bearer token clients must send; None when token checks are off."""
    if service.auth_token_file:
        return read_token_file(service.auth_token_file, "service.auth_token_file")
    if service.auth_token:
        return check_token(service.auth_token.strip(), "service.auth_token")
    return None


def warn_if_exposed(service: ServiceConfig) -> None:
    """Log a warning when the server listens beyond loopback without TLS or without a token."""
    if service.host in _LOOPBACK:
        return
    if not service.tls_cert:
        log.warning(
            "listening on %s without TLS: requests and answers travel in clear text "
            "(set service.tls_cert / tls_key, or terminate TLS in front of the server)",
            service.host,
        )
    if not (service.auth_token or service.auth_token_file or service.tls_client_ca):
        log.warning(
            "listening on %s without authentication: anyone who reaches the port may call it "
            "(set service.auth_token_file or service.tls_client_ca)",
            service.host,
        )


class FailedAuthLimiter:
    """A token bucket of wrong-token attempts per peer address: ``burst`` attempts, refilled at one
    per ``interval_s``. Runs on the event loop only (no locking)."""

    def __init__(
        self,
        burst: int = AUTH_FAILURE_BURST,
        interval_s: float = AUTH_FAILURE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer -> (left, at)

    def _left(self, peer: str) -> float:
        left, at = self._buckets.get(peer, (float(self.burst), self._clock()))
        return min(float(self.burst), left + (self._clock() - at) / self.interval_s)

    def retry_after_s(self, peer: str) -> float:
        """0 when ``peer`` may try a token now, else the seconds until it may."""
        if peer not in self._buckets:
            return 0.0
        left = self._left(peer)
        return 0.0 if left >= 1.0 else (1.0 - left) * self.interval_s

    def record_failure(self, peer: str) -> None:
        self._buckets[peer] = (max(0.0, self._left(peer) - 1.0), self._clock())
        self._buckets.move_to_end(peer)
        while len(self._buckets) > _TRACKED_PEERS:
            self._buckets.popitem(last=False)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` metadata with UNAUTHENTICATED, and
    calls from an address that sent too many wrong tokens with RESOURCE_EXHAUSTED (``limiter``).

    The handler that refuses reads no request message, so an unauthenticated caller's payload is never
    parsed. Calls under ``UNAUTHENTICATED_PREFIXES`` (health checks) pass without a token.
    """

    def __init__(
        self,
        token: str,
        exempt: Sequence[str] = UNAUTHENTICATED_PREFIXES,
        limiter: FailedAuthLimiter | None = None,
    ) -> None:
        self._token = token.encode()
        self._exempt = tuple(exempt)
        self.limiter = limiter if limiter is not None else FailedAuthLimiter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        method = handler_call_details.method
        reason = self._refusal(handler_call_details.invocation_metadata or ())
        if reason is None:
            return with_precheck(handler, self._refuse_if_locked_out)

        async def refuse(context: grpc.aio.ServicerContext) -> None:
            await self._refuse_if_locked_out(context)
            if reason == "invalid":
                self.limiter.record_failure(peer_host(context))
            metrics.AUTH_FAILURES.labels(reason).inc()
            log.info("refused %s from %s: %s bearer token", method, peer_host(context), reason)
            message = (
                "missing `authorization: Bearer <token>` metadata"
                if reason == "missing"
                else "the bearer token is not valid"
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return _refusing_handler(handler, refuse)

    async def _refuse_if_locked_out(self, context: grpc.aio.ServicerContext) -> None:
        peer = peer_host(context)
        wait_s = self.limiter.retry_after_s(peer)
        if wait_s > 0:
            metrics.AUTH_FAILURES.labels("rate_limited").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many wrong bearer tokens from this address; retry in {wait_s:.1f} s",
            )

    def _refusal(self, metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
        values = [value for key, value in metadata if key.lower() == AUTH_METADATA_KEY]
        if not values:
            return "missing"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        if len(values) != 1 or not value.lower().startswith(BEARER):
            return "invalid"
        offered = value[len(BEARER) :].strip().encode("utf-8", "replace")
        return None if hmac.compare_digest(offered, self._token) else "invalid"


def _refusing_handler(
    handler: grpc.RpcMethodHandler, abort: Callable[[grpc.aio.ServicerContext], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    """A handler that reads no request and ends every call with ``abort(context)``.

    Always a request-streaming handler, also for unary methods: grpc.aio receives (and inflates) a
    unary call's message before its handler runs, a streaming one's only when the handler asks. The
    client cannot tell: it gets the status either way."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context)

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context)
        yield  # pragma: no cover - abort raises; this makes the function an async generator

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    return grpc.stream_unary_rpc_method_handler(refuse)
