"""The errors camserve raises on bad input or bad state.

Every user-facing failure is one of these classes. The CLI maps them to exit status 2
with their message; the gRPC service maps them to status codes in one place
(``camserve.service.errors``). Messages name the argument or field that was wrong.
"""

from __future__ import annotations


class CamserveError(Exception):
    """Base class: a failure that has a clear message for the user."""

    #: gRPC status code name (``grpc.StatusCode[...]``) this error maps to.
    grpc_code = "INTERNAL"
    #: The CLI's exit status for it.
    exit_status = 2


class InvalidArgumentError(CamserveError, ValueError):
    """An argument or request field has a bad value; ``argument`` names it."""

    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class NotFoundError(CamserveError, LookupError):
    """A model, layer, file or class that was asked for does not exist."""

    grpc_code = "NOT_FOUND"


class UnsupportedError(CamserveError):
    """The request is well formed but asks for something this model or build cannot do."""

    grpc_code = "UNIMPLEMENTED"


class ExportError(CamserveError):
    """A model could not be exported; the message says why and what to change."""

    grpc_code = "FAILED_PRECONDITION"


class ResourceExhaustedError(CamserveError):
    """A queue or size limit was hit."""

    grpc_code = "RESOURCE_EXHAUSTED"


class StorageError(CamserveError):
    """Output could not be written: a full, read-only or failing disk (the CLI exits 3)."""

    grpc_code = "UNAVAILABLE"
    exit_status = 3
