"""One log setup for every service and command: a level, a format (text or JSON lines), a destination.

Text: `time service LEVEL logger: [request id] message`, one record a line (a traceback follows its
line). JSON: one object a line with `time` (ISO 8601, UTC, milliseconds), `service`, `level`,
`logger`, `message`, `request_id` when the record was written for a request (see
services/platform/request_context.py) and `exception` (the formatted traceback) when there is one.

The destination is stderr, or a file rotated by size (`LOG_FILE_MAX_BYTES`, `LOG_FILE_BACKUPS` older
files kept as `PATH.1` ... `PATH.5`) — except under journald or launchd, which keep the service's
stderr themselves: there a log file is ignored (and says so), so the log is never split in two.
"""

import json
import logging
import os
import sys
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.platform.request_context import RequestIdFilter

LogLevel = Literal["DEBUG", "INFO", "WARNING"]
LogFormat = Literal["text", "json"]

LOG_FILE_MAX_BYTES = 10 * 2**20
"""A log file is rotated once it would grow past 10 MiB."""
LOG_FILE_BACKUPS = 5
"""Rotated files kept (`PATH.1` the newest): at most 60 MiB of logs per file name."""

_QUIET_LIBRARIES = ("httpx", "httpcore")
"""Libraries whose INFO lines are one per HTTP call: shown only with -v."""


class LogSettings(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    level: LogLevel = "INFO"
    format: LogFormat = "text"
    file: Path | None = None
    """None: stderr."""
    file_max_bytes: int = LOG_FILE_MAX_BYTES
    file_backups: int = LOG_FILE_BACKUPS


def under_service_manager() -> str | None:
    """ "journald" or "launchd" when one of them keeps this process's output, else None."""
    if os.environ.get("JOURNAL_STREAM"):
        return "journald"  # systemd sets it when stdout/stderr go to the journal
    if os.environ.get("XPC_SERVICE_NAME", "0") != "0":
        return "launchd"  # launchd names the job; an interactive shell on macOS has "0"
    return None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": self._service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id: object = getattr(record, "request_id", None)
        if request_id is not None:
            document["request_id"] = str(request_id)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False)


class TextLogFormatter(logging.Formatter):
    """The classic line, with `[request id]` before the message of a request's records."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(request_prefix)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id: object = getattr(record, "request_id", None)
        record.request_prefix = "" if request_id is None else f"[{request_id}] "
        return super().format(record)


def _handler(settings: LogSettings) -> tuple[logging.Handler, str | None]:
    """The handler for `settings`, and why a requested file is not used (or None)."""
    if settings.file is None:
        return logging.StreamHandler(sys.stderr), None
    manager = under_service_manager()
    if manager is not None:
        return logging.StreamHandler(sys.stderr), f"{manager} keeps this service's log; --log-file is ignored"
    settings.file.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(
        settings.file, maxBytes=settings.file_max_bytes, backupCount=settings.file_backups, encoding="utf-8"
    )
    return handler, None


def configure_logging(service: str, settings: LogSettings | None = None) -> None:
    """Replaces the root logger's handlers with one handler for `settings` (default: INFO, text, stderr)."""
    settings = settings or LogSettings()
    handler, ignored_file = _handler(settings)
    handler.setFormatter(JsonLogFormatter(service) if settings.format == "json" else TextLogFormatter(service))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for previous in root.handlers:
        previous.close()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    for library in _QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.DEBUG if settings.level == "DEBUG" else logging.WARNING)
    if ignored_file is not None:
        logging.getLogger(__name__).info("%s", ignored_file)
