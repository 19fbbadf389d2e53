"""The request id of the work running now, for the log lines written about it.

The gateway assigns one id per HTTP request (or keeps the client's valid `X-Request-Id`) and sends it
to the first shard as `x-request-id` gRPC metadata; each side binds it to the running task's context
(contextvars), and `RequestIdFilter` copies it onto every log record written in that context, so a
log line needs no id argument to carry it. Tasks inherit the context they are created in, so work the
request spawns keeps the id; threads do not (the shard's stage worker names its requests itself).
"""

import logging
import re
import uuid
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
"""The HTTP header and the gRPC metadata key (gRPC keys are lower case)."""

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,127}")
"""What an incoming id may be: printable, no spaces, at most 128 characters (it goes into every log line)."""

_current_request_id: ContextVar[str | None] = ContextVar("strata_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(text: str) -> bool:
    return REQUEST_ID_PATTERN.fullmatch(text) is not None


def current_request_id() -> str | None:
    return _current_request_id.get()


@contextmanager
def request_scope(request_id: str) -> Generator[None]:
    """Binds `request_id` for the code inside the block (and the tasks it creates)."""
    token = _current_request_id.set(request_id)
    try:
        yield
    finally:
        _current_request_id.reset(token)


def bind_request_id(request_id: str) -> None:
    """Binds `request_id` for the rest of the running task: for a gRPC handler, whose task (and context)
    is its call's alone. A streaming handler cannot reset it safely: its generator may be closed from
    another context."""
    _current_request_id.set(request_id)


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying the current request id (none outside a request)."""
    request_id = _current_request_id.get()
    return () if request_id is None else ((REQUEST_ID_HEADER, request_id),)


def request_id_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The valid request id in incoming gRPC metadata, or None."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and valid_request_id(value):
            return value
    return None


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` (None outside a request) on every record its handler formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _current_request_id.get()
        return True
