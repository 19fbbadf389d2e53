"""One request id per HTTP request: the client's valid `X-Request-Id`, else a new one.

The id is bound to the request's context (services/platform/request_context.py) while the app runs,
so every log line written for the request carries it, and the first shard receives it as gRPC
metadata; it is returned as the `X-Request-Id` response header, refusals and errors included. Each
request ends with one access line: method, path, status, seconds (DEBUG for `/health` and `/metrics`,
which are polled; INFO otherwise). An invalid incoming id (see REQUEST_ID_PATTERN) is replaced, not
refused: a header the client got wrong should not cost it its completion.
"""

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.platform.request_context import REQUEST_ID_HEADER, new_request_id, request_scope, valid_request_id

logger = logging.getLogger(__name__)

POLLED_PATHS = ("/health", "/metrics")


class RequestIds:
    """ASGI middleware: binds, returns and logs each HTTP request's id."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = incoming if incoming is not None and valid_request_id(incoming) else new_request_id()
        status = 500  # what the client gets if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        with request_scope(request_id):
            try:
                await self._app(scope, receive, send_with_id)
            finally:
                path = str(scope["path"])
                log = logger.debug if path in POLLED_PATHS else logger.info
                log("%s %s %d in %.3f s", scope["method"], path, status, time.perf_counter() - started)
