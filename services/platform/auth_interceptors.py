"""gRPC interceptors for the cluster token: servers check it, clients attach it.

Insecure channels cannot carry call credentials, so the token travels as call metadata that a client
interceptor adds to every call (aio and sync channels alike).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from services.platform.auth import OPEN_METHOD_PREFIXES, authorization_metadata, bearer_matches

logger = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
REFUSAL_HINT = (
    "strata RPCs need the cluster token as `authorization: Bearer <token>` metadata "
    "(see $STRATA_HOME/cluster.token and `strata join`)"
)


def _refusing_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, reason: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that logs the refusal and answers UNAUTHENTICATED."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        logger.warning("refused %s from %s: %s", method, context.peer(), reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{reason}: {REFUSAL_HINT}")

    match (handler.request_streaming, handler.response_streaming):
        case (False, False):
            return grpc.unary_unary_rpc_method_handler(refuse)
        case (False, True):
            return grpc.unary_stream_rpc_method_handler(refuse)
        case (True, False):
            return grpc.stream_unary_rpc_method_handler(refuse)
        case _:
            return grpc.stream_stream_rpc_method_handler(refuse)


class TokenServerInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with the cluster token, except health and reflection."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if method.startswith(OPEN_METHOD_PREFIXES) or bearer_matches(metadata, self._token):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        presented = any(key.lower() == "authorization" for key, _ in metadata or ())
        return _refusing_handler(handler, method, "wrong cluster token" if presented else "no cluster token")


def _with_token_aio(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), authorization_metadata(token))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AioTokenInterceptor:
    def __init__(self, token: str) -> None:
        self._token = token


# grpc.aio files an interceptor under the first call kind it implements only, so one class per kind.
class _UnaryUnaryToken(_AioTokenInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Request], Awaitable[grpc.aio.UnaryUnaryCall[_Request, _Response]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Request,
    ) -> _Response | grpc.aio.UnaryUnaryCall[_Request, _Response]:
        return await continuation(_with_token_aio(client_call_details, self._token), request)


class _UnaryStreamToken(_AioTokenInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, _Request], Awaitable[grpc.aio.UnaryStreamCall[_Request, _Response]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Request,
    ) -> AsyncIterator[_Response] | grpc.aio.UnaryStreamCall[_Request, _Response]:
        return await continuation(_with_token_aio(client_call_details, self._token), request)


class _StreamUnaryToken(_AioTokenInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Request] | Iterable[_Request]],
            Awaitable[grpc.aio.StreamUnaryCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Request] | Iterable[_Request],
    ) -> _Response | grpc.aio.StreamUnaryCall[_Request, _Response]:
        return await continuation(_with_token_aio(client_call_details, self._token), request_iterator)


class _StreamStreamToken(_AioTokenInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Request] | Iterable[_Request]],
            Awaitable[grpc.aio.StreamStreamCall[_Request, _Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Request] | Iterable[_Request],
    ) -> AsyncIterator[_Response] | grpc.aio.StreamStreamCall[_Request, _Response]:
        return await continuation(_with_token_aio(client_call_details, self._token), request_iterator)


def token_client_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add the cluster token to every call of a grpc.aio channel."""
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token), _StreamUnaryToken(token), _StreamStreamToken(token)]


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, token: str) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = (*(details.metadata or ()), authorization_metadata(token))
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class SyncTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the cluster token to every call of a synchronous channel (operator commands, tests)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Request], Any],
        client_call_details: grpc.ClientCallDetails,
        request: _Request,
    ) -> Any:
        return continuation(_SyncCallDetails(client_call_details, self._token), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Request], Any],
        client_call_details: grpc.ClientCallDetails,
        request: _Request,
    ) -> Any:
        return continuation(_SyncCallDetails(client_call_details, self._token), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Request]], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Request],
    ) -> Any:
        return continuation(_SyncCallDetails(client_call_details, self._token), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Request]], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Request],
    ) -> Any:
        return continuation(_SyncCallDetails(client_call_details, self._token), request_iterator)
