"""The one place a strata server turns a refusal into a gRPC status.

Servicers (and the request decoder) raise a `services.kernel.status_errors.StatusError`; this
interceptor answers it with `context.abort(code, message, trailing_metadata)`, for every kind of method
(unary or streaming requests and replies, a stream ending after some replies included). Any other
exception goes on to gRPC unchanged, which answers UNKNOWN and logs it (once).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, get_args

import grpc

from services.kernel.status_errors import StatusError, StatusName

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def status_name(code: grpc.StatusCode) -> StatusName:
    """The name of a status another server answered with, to relay it (OK, never an error, as UNKNOWN)."""
    return _NAMES.get(code, "UNKNOWN")


_NAMES: dict[grpc.StatusCode, StatusName] = {grpc.StatusCode[name]: name for name in get_args(StatusName)}


async def abort_with(context: Context, error: StatusError) -> NoReturn:
    await context.abort(grpc.StatusCode[error.status_name], error.message, trailing_metadata=error.trailing_metadata)


def _mapping_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        unary_unary: Any = handler.unary_unary
        if not inspect.iscoroutinefunction(unary_unary):
            return handler  # a synchronous handler: left as it is

        async def unary_in_unary_out(request: object, context: Context) -> object:
            try:
                return await unary_unary(request, context)
            except StatusError as error:
                await abort_with(context, error)

        return grpc.unary_unary_rpc_method_handler(
            unary_in_unary_out, request_deserializer=deserialize, response_serializer=serialize
        )
    if not handler.request_streaming:
        unary_stream: Any = handler.unary_stream
        if not inspect.isasyncgenfunction(unary_stream):
            return handler  # a coroutine writing with context.write (or synchronous): left as it is

        async def unary_in_stream_out(request: object, context: Context) -> AsyncIterator[object]:
            try:
                replies: AsyncIterator[object] = unary_stream(request, context)
                async for reply in replies:
                    yield reply
            except StatusError as error:
                await abort_with(context, error)

        return grpc.unary_stream_rpc_method_handler(
            unary_in_stream_out, request_deserializer=deserialize, response_serializer=serialize
        )
    if not handler.response_streaming:
        stream_unary: Any = handler.stream_unary
        if not inspect.iscoroutinefunction(stream_unary):
            return handler

        async def stream_in_unary_out(requests: AsyncIterable[object], context: Context) -> object:
            try:
                return await stream_unary(requests, context)
            except StatusError as error:
                await abort_with(context, error)

        return grpc.stream_unary_rpc_method_handler(
            stream_in_unary_out, request_deserializer=deserialize, response_serializer=serialize
        )
    stream_stream: Any = handler.stream_stream
    if not inspect.isasyncgenfunction(stream_stream):
        return handler

    async def stream_in_stream_out(requests: AsyncIterable[object], context: Context) -> AsyncIterator[object]:
        try:
            replies: AsyncIterator[object] = stream_stream(requests, context)
            async for reply in replies:
                yield reply
        except StatusError as error:
            await abort_with(context, error)

    return grpc.stream_stream_rpc_method_handler(
        stream_in_stream_out, request_deserializer=deserialize, response_serializer=serialize
    )


class StatusErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answers a `StatusError` raised by any handler it wraps with its status; install it outside
    `MalformedRequestInterceptor` so undecodable requests are answered too."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return _mapping_handler(handler) if handler is not None else None
