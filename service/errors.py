"""The one place where exceptions become gRPC status codes.

camserve's own errors carry their code (``CamserveError.grpc_code``); the two below exist only in the
service. Anything else is a bug: it becomes INTERNAL and a log line with the traceback, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import grpc

from camserve.config import clip as clip  # re-exported: the service's modules cut echoed strings with it
from camserve.errors import CamserveError

log = logging.getLogger(__name__)


class DeadlineExceededError(CamserveError):
    """The request's deadline passed before its work could run."""

    grpc_code = "DEADLINE_EXCEEDED"


#: The message of every call refused or ended by shutdown (UNAVAILABLE: clients retry elsewhere).
SHUTTING_DOWN = "server is shutting down; retry on another replica"


class UnavailableError(CamserveError):
    """The server is shutting down and takes no new work."""

    grpc_code = "UNAVAILABLE"


#: Status messages travel in a metadata header (grpc-message); longer ones are cut so that a message
#: echoing a huge client string can never exceed the peer's metadata limit.
MAX_STATUS_CHARS = 2000


async def abort_with_status(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with ``exc``'s status code and message (``context.abort`` raises)."""
    code, message = status_for(exc)
    await context.abort(code, message)
    raise AssertionError("ServicerContext.abort returned")  # unreachable: abort always raises


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a failed request gets for ``exc``."""
    if isinstance(exc, CamserveError):
        return grpc.StatusCode[exc.grpc_code], clip(str(exc), MAX_STATUS_CHARS)
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
