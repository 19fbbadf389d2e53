"""Refusals a client sees as a gRPC status: domain code raises them, one server interceptor answers them.

A `StatusError` carries the status name (one of gRPC's codes, by name, so this floor needs no gRPC),
the message the client reads as the status details, and optional trailing metadata (a retry hint).
`services.platform.status_interceptor` turns each one into `context.abort(code, message, metadata)`;
anything else a servicer raises is left to gRPC (UNKNOWN, logged once by gRPC).
"""

from typing import ClassVar, Literal

StatusName = Literal[
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]

TrailingMetadata = tuple[tuple[str, str], ...]


class StatusError(Exception):
    """A refusal answered with `status` (the class's, or one given for a relayed status) and `message`."""

    status: ClassVar[StatusName] = "UNKNOWN"

    def __init__(
        self, message: str, trailing_metadata: TrailingMetadata = (), *, status: StatusName | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.trailing_metadata = trailing_metadata
        self.status_name: StatusName = status if status is not None else type(self).status


class InvalidArgumentError(StatusError):
    """The request itself is malformed: retrying it unchanged cannot succeed."""

    status = "INVALID_ARGUMENT"


class NotFoundError(StatusError):
    status = "NOT_FOUND"


class AlreadyExistsError(StatusError):
    status = "ALREADY_EXISTS"


class FailedPreconditionError(StatusError):
    """Well formed, but this server is not in a state to carry it out."""

    status = "FAILED_PRECONDITION"


class OutOfRangeError(StatusError):
    status = "OUT_OF_RANGE"


class ResourceExhaustedError(StatusError):
    status = "RESOURCE_EXHAUSTED"


class UnavailableError(StatusError):
    """Try again later, or elsewhere."""

    status = "UNAVAILABLE"
