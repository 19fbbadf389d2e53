"""Malformed request bytes get INVALID_ARGUMENT, not UNKNOWN.

grpc decodes a request before the servicer runs, and answers a decode failure with UNKNOWN
("Unexpected DecodeError"), as if the server had failed. This interceptor hands the servicer's own
deserializer the raw bytes itself and refuses what does not parse (`MalformedRequestError`, answered
by `services.platform.status_interceptor`, installed outside this one), with the method in the status,
for every kind of method (unary or streaming requests and replies).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from services.kernel.status_errors import InvalidArgumentError

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Deserializer: TypeAlias = "Callable[[bytes], Any]"


class MalformedRequestError(InvalidArgumentError):
    """The request bytes are not the method's request message."""


def _decode(raw: bytes, deserialize: Deserializer, method: str) -> object:
    try:
        return deserialize(raw)
    except DecodeError as error:
        raise MalformedRequestError(f"{method}: the request message does not parse: {error}") from error


async def _decoded_stream(raws: AsyncIterable[bytes], deserialize: Deserializer, method: str) -> AsyncIterator[object]:
    async for raw in raws:
        yield _decode(raw, deserialize, method)


def _decoding_handler(
    handler: grpc.RpcMethodHandler[Any, Any], deserialize: Deserializer, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    serialize = handler.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        unary_unary: Any = handler.unary_unary

        async def unary_in_unary_out(raw: bytes, context: Context) -> object:
            return await unary_unary(_decode(raw, deserialize, method), context)

        return grpc.unary_unary_rpc_method_handler(unary_in_unary_out, response_serializer=serialize)
    if not handler.request_streaming:
        unary_stream: Any = handler.unary_stream
        if not inspect.isasyncgenfunction(unary_stream):
            return handler  # a coroutine writing with context.write: left as it is

        async def unary_in_stream_out(raw: bytes, context: Context) -> AsyncIterator[object]:
            replies: AsyncIterator[object] = unary_stream(_decode(raw, deserialize, method), context)
            async for reply in replies:
                yield reply

        return grpc.unary_stream_rpc_method_handler(unary_in_stream_out, response_serializer=serialize)
    if not handler.response_streaming:
        stream_unary: Any = handler.stream_unary

        async def stream_in_unary_out(raws: AsyncIterable[bytes], context: Context) -> object:
            return await stream_unary(_decoded_stream(raws, deserialize, method), context)

        return grpc.stream_unary_rpc_method_handler(stream_in_unary_out, response_serializer=serialize)
    stream_stream: Any = handler.stream_stream
    if not inspect.isasyncgenfunction(stream_stream):
        return handler

    async def stream_in_stream_out(raws: AsyncIterable[bytes], context: Context) -> AsyncIterator[object]:
        replies: AsyncIterator[object] = stream_stream(_decoded_stream(raws, deserialize, method), context)
        async for reply in replies:
            yield reply

    return grpc.stream_stream_rpc_method_handler(stream_in_stream_out, response_serializer=serialize)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _decoding_handler(handler, handler.request_deserializer, handler_call_details.method)
