"""Optional API keys for the gateway's `/v1/*` routes (`Authorization: Bearer <key>` or `x-api-key: <key>`).

Keys come from `--api-key-file` (one per line; blank lines and `#` comments skipped) and/or
`$STRATA_API_KEYS` (separated by commas or whitespace). With none, the gateway is open, as before.
`/health` stays open either way, and so do GET/HEAD of the read-only cluster view: the dashboard
(`/`, `/dashboard/*`), `/v1/cluster`, `/v1/cluster/events`, `/v1/cluster/models`, `/v1/cluster/pulls`
and `/v1/cluster/models/{id}/preview`. Mutating cluster routes are checked by their own dependency.
A refusal is OpenAI's 401 `invalid_api_key` error body; it is logged
with the client address, never with the key presented.
"""

import hmac
import json
import logging
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ANTHROPIC_PATH_PREFIX, OLLAMA_PATH_PREFIX

logger = logging.getLogger(__name__)

API_KEYS_ENVIRONMENT_VARIABLE = "STRATA_API_KEYS"
PROTECTED_PREFIXES = ("/v1/", OLLAMA_PATH_PREFIX)
OPEN_READ_PATHS = frozenset({"/v1/cluster", "/v1/cluster/events", "/v1/cluster/models", "/v1/cluster/pulls"})
READ_METHODS = frozenset({"GET", "HEAD"})


def is_open_read(method: str, path: str) -> bool:
    """Whether a request reads the cluster view, which needs no key."""
    if method not in READ_METHODS:
        return False
    if path in OPEN_READ_PATHS:
        return True
    return path.startswith("/v1/cluster/models/") and path.endswith("/preview")


def load_api_keys(key_file: Path | None) -> tuple[bytes, ...]:
    keys: list[str] = []
    if key_file is not None:
        for line in key_file.read_text().splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                keys.append(stripped)
    keys.extend(os.environ.get(API_KEYS_ENVIRONMENT_VARIABLE, "").replace(",", " ").split())
    return tuple(key.encode() for key in keys)


def _presented_key(scope: Scope) -> bytes | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name.lower() == b"x-api-key":  # how Anthropic's clients send their key
            return value.strip()
    return None


def _key_accepted(presented: bytes | None, keys: tuple[bytes, ...]) -> bool:
    if presented is None:
        return False
    # Compare with every key, in constant time each, so timing tells nothing about which one is near.
    matches = [hmac.compare_digest(presented, key) for key in keys]
    return any(matches)


def _refusal_body(presented: bool, path: str) -> bytes:
    message = (
        "Incorrect API key provided."
        if presented
        else "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`)."
    )
    if path.startswith(OLLAMA_PATH_PREFIX):
        return json.dumps({"error": message}).encode()
    if path.startswith(ANTHROPIC_PATH_PREFIX):
        return json.dumps({"type": "error", "error": {"type": "authentication_error", "message": message}}).encode()
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    return json.dumps({"error": error}).encode()


class ApiKeyGuard:
    """ASGI wrapper: `/v1/*` and `/api/*` requests need one of `keys`; every other path passes through."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...]) -> None:
        self._app = app
        self._keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] != "http"
            or not path.startswith(PROTECTED_PREFIXES)
            or is_open_read(str(scope.get("method", "")), path)
        ):
            await self._app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if _key_accepted(presented, self._keys):
            await self._app(scope, receive, send)
            return
        client = scope.get("client")
        logger.warning(
            "refused %s from %s: %s API key", path, client[0] if client else "?", "wrong" if presented else "no"
        )
        body = _refusal_body(presented is not None, path)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
