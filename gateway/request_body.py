"""Reading a JSON request body into a dialect's pydantic schema, safely.

Every dialect's POST handler starts with `decode_json_body`, which enforces, in this order:
a size limit (`BodyTooLargeError`, checked on Content-Length and again while reading, so a huge
body is never held in memory), strict UTF-8 and well-formed JSON (`MalformedBodyError`), then the
schema (`BodyValidationError`, carrying pydantic's error list so the HTTP layer can name the
offending parameter). The schema is validated in pydantic's JSON mode, which also rejects lone
surrogate escapes and absurd nesting.
"""

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

Schema = TypeVar("Schema", bound=BaseModel)


class BodyTooLargeError(Exception):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"The request body is larger than the limit of {max_bytes} bytes.")
        self.max_bytes = max_bytes


class MalformedBodyError(Exception):
    """The body is not valid UTF-8 or not valid JSON."""


class BodyValidationError(Exception):
    """The body is JSON but does not fit the schema; `errors` is pydantic's list, first error first."""

    __match_args__ = ("errors",)

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("the request body does not match the schema")
        self.errors = errors


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared_length = request.headers.get("content-length")
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > max_bytes:
        raise BodyTooLargeError(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(raw: bytes, schema: type[Schema]) -> Schema:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedBodyError(
            f"The request body is not valid UTF-8 (invalid byte at offset {error.start})."
        ) from error
    try:
        return schema.model_validate_json(text)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise MalformedBodyError(
                f"We could not parse the JSON body of your request: {errors[0]['msg']}."
            ) from error
        raise BodyValidationError(list(errors)) from error


async def decode_json_body(request: Request, schema: type[Schema], max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Schema:
    return parse_body(await read_body(request, max_bytes), schema)
