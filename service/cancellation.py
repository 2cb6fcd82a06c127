"""Stopping work that nobody waits for any more, at every stage of a request.

gRPC cancels a handler when its deadline passes or its client goes away, but work the handler started
in a thread (decoding images) or handed to a batcher (graph runs) would go on. Each call therefore gets
a ``RequestScope`` (set by ``camserve.service.interceptors``) that any thread can ask whether the call
is still wanted; decoding checks it between images, the batcher between graph runs (through a plain
``StopCheck`` callable, so the CAM core never learns about gRPC).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from camserve.errors import CamserveError
from camserve.service.errors import DeadlineExceededError

#: ``stop()`` is True once the work's result can no longer be delivered. Called from any thread.
StopCheck = Callable[[], bool]


class RequestCancelledError(CamserveError):
    """The client cancelled the call (or it ended) while its work was still running."""

    grpc_code = "CANCELLED"


@dataclass
class RequestScope:
    """One call's deadline (a ``time.monotonic()`` instant, None: none) and whether it has ended."""

    deadline: float | None
    ended: threading.Event = field(default_factory=threading.Event)
    request_bytes: int | None = None  # a unary call's request message size (None: a stream's)

    @classmethod
    def from_time_remaining(cls, time_remaining: float | None) -> RequestScope:
        return cls(None if time_remaining is None else time.monotonic() + time_remaining)

    def stopped(self) -> bool:
        return self.ended.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def check(self, stage: str) -> None:
        """Raise DeadlineExceededError / RequestCancelledError naming ``stage`` once the call is over."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError(f"deadline passed during {stage}; the rest of the work was dropped")
        if self.ended.is_set():
            raise RequestCancelledError(f"call cancelled during {stage}; the rest of the work was dropped")


_CURRENT: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("request_scope", default=None)


def enter_scope(scope: RequestScope) -> None:
    """Make ``scope`` the current call's scope (for this task and the threads and tasks it starts)."""
    _CURRENT.set(scope)


def current_scope() -> RequestScope | None:
    return _CURRENT.get()


def check_request_alive(stage: str) -> None:
    """Raise when the current call is over (no-op outside a call, e.g. in-process use and tests)."""
    scope = _CURRENT.get()
    if scope is not None:
        scope.check(stage)
