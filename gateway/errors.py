"""The gateway's one mapping from exceptions to HTTP statuses and OpenAI-style error JSON.

Every error leaves the gateway as `{"error": {"message", "type", "param", "code"}}`, either as an
HTTP response (`install_error_handlers`) or, once a stream has started, as a final SSE event built
from the same `describe_error`:

| exception                                | status      | type                  | code                    |
| ---------------------------------------- | ----------- | --------------------- | ----------------------- |
| `MalformedBodyError` (JSON, UTF-8)       | 400         | invalid_request_error | invalid_json            |
| `BodyValidationError`, FastAPI's         | 400         | invalid_request_error | invalid_type,           |
| `RequestValidationError` (param = field) |             |                       | invalid_value, missing_ |
|                                          |             |                       | required_parameter      |
| `InvalidRequestError`                    | 400         | invalid_request_error | its own                 |
| `ModelNotFoundError`                     | 404         | invalid_request_error | model_not_found         |
| `BodyTooLargeError`                      | 413         | invalid_request_error | request_too_large       |
| Starlette `HTTPException` (404, 405)     | its own     | invalid_request_error | None                    |
| `ModelUnavailableError`                  | 503 + Retry-After | server_error    | model_not_ready         |
| `ClusterUnavailableError` (coordinator)  | 503 + Retry-After | server_error    | cluster_unavailable     |
| `OverloadedError` (shard admission)      | 503 + Retry-After | server_error    | overloaded              |
| `ModelUnservedError` (unserved mid-run)  | 404         | invalid_request_error | model_unserved          |
| `RecoveryFailedError` (gave up replaying) | 502        | server_error          | pipeline_recovery_failed |
| `PipelineError`                          | 502         | server_error          | pipeline_error          |
| anything else                            | 500         | server_error          | internal_error          |

`OverloadedError` is the first shard refusing a request at its KV budget or full wait queue
(RESOURCE_EXHAUSTED): 503 with the shard's `Retry-After` hint, never 429 (that is kept for per-key
rate limits). `PipelineError` is 502 Bad Gateway: the gateway works but the shard pipeline behind it failed,
which is worth telling apart from a gateway bug (500); clients retry both. Server errors never
carry the exception's text, which could leak internals (addresses, traces); it is logged instead.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.cluster_view import ClusterUnavailableError
from gateway.generation_request import InvalidRequestError, ModelNotFoundError
from gateway.request_body import BodyTooLargeError, BodyValidationError, MalformedBodyError
from gateway.token_source import (
    ModelUnavailableError,
    ModelUnservedError,
    OverloadedError,
    PipelineError,
    RecoveryFailedError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
"""What a 503 asks the client to wait: about one placement or load step."""

ErrorType = Literal["invalid_request_error", "server_error"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    message: str
    type: ErrorType
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """The JSON of every error response and of the error event that ends a broken stream."""

    model_config = ConfigDict(frozen=True, strict=True)

    error: ErrorDetail


@dataclass(frozen=True)
class ErrorDescription:
    status: int
    body: ErrorBody
    headers: dict[str, str] = field(default_factory=dict[str, str])


def describe_error(error: BaseException) -> ErrorDescription:
    """The status and JSON an exception maps to; the only place that decides it."""
    match error:
        case MalformedBodyError():
            return _client_error(400, str(error), None, "invalid_json")
        case BodyValidationError(errors=errors):
            return _validation_error(errors)
        case RequestValidationError():
            return _validation_error(error.errors())
        case InvalidRequestError(message=message, param=param, code=code):
            return _client_error(400, message, param, code)
        case ModelNotFoundError():
            return _client_error(404, str(error), "model", "model_not_found")
        case BodyTooLargeError():
            return _client_error(413, str(error), None, "request_too_large")
        case ModelUnavailableError():
            message = str(error) or "No ready instance of this model can serve right now."
            return ErrorDescription(
                503,
                _body(f"{message} Retry later.", "server_error", None, "model_not_ready"),
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        case ClusterUnavailableError():
            return ErrorDescription(
                503,
                _body(f"{error} Retry later.", "server_error", None, "cluster_unavailable"),
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        case OverloadedError(retry_after_seconds=retry_after):
            message = "The model is at its capacity (KV cache budget) right now. Retry later."
            return ErrorDescription(
                503, _body(message, "server_error", None, "overloaded"), {"Retry-After": str(retry_after)}
            )
        case ModelUnservedError():
            return _client_error(404, str(error), "model", "model_unserved")
        case RecoveryFailedError():
            return ErrorDescription(502, _body(str(error), "server_error", None, "pipeline_recovery_failed"))
        case PipelineError():
            message = "The model pipeline failed while serving this request; retry it."
            return ErrorDescription(502, _body(message, "server_error", None, "pipeline_error"))
        case StarletteHTTPException(status_code=status, detail=detail, headers=headers):
            error_type: ErrorType = "server_error" if status >= 500 else "invalid_request_error"
            return ErrorDescription(status, _body(str(detail), error_type, None, None), dict(headers or {}))
        case _:
            return ErrorDescription(
                500, _body("The server had an internal error.", "server_error", None, "internal_error")
            )


ANTHROPIC_PATH_PREFIX = "/v1/messages"
"""Errors under this path are written in Anthropic's shape (`anthropic_error_body`)."""

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
ANTHROPIC_OVERLOADED_STATUS = 529
"""Anthropic's status for `overloaded_error` (strata's 503: no ready instance, or at capacity)."""


def anthropic_error_body(description: ErrorDescription) -> dict[str, object]:
    """`{"type": "error", "error": {"type", "message"}}`, the type chosen by the HTTP status."""
    error_type = _ANTHROPIC_ERROR_TYPES.get(
        description.status, "api_error" if description.status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": error_type, "message": description.body.error.message}}


def anthropic_status(status: int) -> int:
    if status == 503:
        return ANTHROPIC_OVERLOADED_STATUS
    return 500 if status > 500 else status


OLLAMA_PATH_PREFIX = "/api/"
"""Errors under this path are Ollama's `{"error": "..."}` with the same status."""


def error_response(error: BaseException, path: str = "") -> JSONResponse:
    description = describe_error(error)
    if path.startswith(OLLAMA_PATH_PREFIX):
        return JSONResponse({"error": description.body.error.message}, description.status, headers=description.headers)
    if path.startswith(ANTHROPIC_PATH_PREFIX):
        body = anthropic_error_body(description)
        return JSONResponse(body, anthropic_status(description.status), headers=description.headers)
    return JSONResponse(description.body.model_dump(), description.status, headers=description.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Routes every exception a request raises through `describe_error`."""

    async def handle(request: Request, error: Exception) -> JSONResponse:
        # Only Starlette's own 404 (no route): a route's 404 keeps its message (an unknown repository).
        if isinstance(error, StarletteHTTPException) and error.status_code == 404 and error.detail == "Not Found":
            error = StarletteHTTPException(404, f"Unknown URL: {request.method} {request.url.path}")
        elif isinstance(error, OverloadedError):
            logger.info("%s %s: refused at capacity: %s", request.method, request.url.path, error)
        elif isinstance(error, PipelineError):
            logger.warning("%s %s: pipeline failed: %s", request.method, request.url.path, error)
        return error_response(error, request.url.path)

    for error_class in (
        MalformedBodyError,
        BodyValidationError,
        RequestValidationError,
        InvalidRequestError,
        ModelNotFoundError,
        BodyTooLargeError,
        ModelUnavailableError,
        ClusterUnavailableError,
        OverloadedError,
        PipelineError,
        StarletteHTTPException,
        Exception,  # Starlette answers it from its outermost middleware, then re-raises it to be logged
    ):
        app.add_exception_handler(error_class, handle)


def _client_error(status: int, message: str, param: str | None, code: str | None) -> ErrorDescription:
    return ErrorDescription(status, _body(message, "invalid_request_error", param, code))


def _body(message: str, error_type: ErrorType, param: str | None, code: str | None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, type=error_type, param=param, code=code))


def _validation_error(errors: Sequence[Any]) -> ErrorDescription:
    """The first schema violation, named by the path of the offending field (e.g. `messages[0].role`).

    Only the first is reported: later ones are often its echoes (a list that is "too short" because
    its one item failed).
    """
    if not errors:
        return _client_error(400, "The request is invalid.", None, "invalid_value")
    first: dict[str, Any] = errors[0]
    location = _strip_source(tuple(first.get("loc", ())))
    param = _format_location(location) or None
    error_type = str(first.get("type", ""))
    if error_type == "missing":
        code = "missing_required_parameter"
        message = f"Missing required parameter: '{param}'."
    else:
        code = "invalid_type" if error_type.endswith("_type") else "invalid_value"
        subject = f"Invalid value for '{param}'" if param else "Invalid request body"
        message = f"{subject}: {first.get('msg', 'invalid')}."
    return _client_error(400, message, param, code)


def _strip_source(location: tuple[Any, ...]) -> tuple[Any, ...]:
    """FastAPI prefixes where a value came from ("body", "query"); the client only needs the field."""
    if location and location[0] in ("body", "query", "path", "header", "cookie"):
        return location[1:]
    return location


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
