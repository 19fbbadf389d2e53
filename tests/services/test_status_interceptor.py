"""Refusals raised by a handler reach the client as their gRPC status, details and trailing metadata,
from a real in-process server on 127.0.0.1, for every kind of method (replies sent before a refusal in
a stream included); other exceptions are left to gRPC (UNKNOWN)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from services.kernel.status_errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    StatusError,
    UnavailableError,
)
from services.platform.grpc_decode import MalformedRequestInterceptor
from services.platform.status_interceptor import StatusErrorInterceptor, status_name

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

Context = grpc.aio.ServicerContext[Any, Any]
RETRY = (("retry-after-seconds", "3"),)
REFUSALS: dict[bytes, StatusError] = {
    b"invalid": InvalidArgumentError("prompt_tokens must not be empty"),
    b"missing": NotFoundError("model 'x' is not in this store"),
    b"exists": AlreadyExistsError("request r1 is already running"),
    b"precondition": FailedPreconditionError("term 1 is older than term 2 already seen"),
    b"range": OutOfRangeError("offset 9 is outside 0..4"),
    b"exhausted": ResourceExhaustedError("the shard is at its KV budget", RETRY),
    b"unavailable": UnavailableError("no leader with a live lease here; leader: ''"),
    b"relayed": StatusError("leader a:1: denied", status="PERMISSION_DENIED"),
}
EXPECTED = {
    b"invalid": grpc.StatusCode.INVALID_ARGUMENT,
    b"missing": grpc.StatusCode.NOT_FOUND,
    b"exists": grpc.StatusCode.ALREADY_EXISTS,
    b"precondition": grpc.StatusCode.FAILED_PRECONDITION,
    b"range": grpc.StatusCode.OUT_OF_RANGE,
    b"exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    b"unavailable": grpc.StatusCode.UNAVAILABLE,
    b"relayed": grpc.StatusCode.PERMISSION_DENIED,
}


def _act(request: bytes) -> bytes:
    """Raises the refusal `request` names, RuntimeError for b"crash", else echoes it."""
    if request == b"crash":
        raise RuntimeError("a bug")
    refusal = REFUSALS.get(request)
    if refusal is not None:
        raise refusal
    return request


async def _unary(request: bytes, context: Context) -> bytes:
    return _act(request)


async def _server_stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
    yield b"first"  # a reply already sent when the refusal comes
    yield _act(request)


async def _client_stream(requests: AsyncIterator[bytes], context: Context) -> bytes:
    last = b""
    async for request in requests:
        last = _act(request)
    return last


async def _bidi(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _act(request)


async def _serving(scenario: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    server = grpc.aio.server(interceptors=[StatusErrorInterceptor(), MalformedRequestInterceptor()])
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Status", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await scenario(channel)
    finally:
        await server.stop(None)


def _check(refused: grpc.aio.AioRpcError, key: bytes) -> None:
    assert refused.code() == EXPECTED[key]
    assert refused.details() == REFUSALS[key].message
    trailing = [(str(name), str(value)) for name, value in refused.trailing_metadata() or ()]
    for pair in REFUSALS[key].trailing_metadata:
        assert pair in trailing


@pytest.mark.parametrize("key", list(REFUSALS))
def test_a_refusal_gets_its_status_on_every_kind_of_method(key: bytes) -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Status/Unary")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary(key, timeout=5)
        _check(refused.value, key)

        server_stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/test.Status/ServerStream"
        )
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for reply in server_stream(key, timeout=5):
                received.append(reply)
        assert received == [b"first"]
        _check(refused.value, key)

        client_stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            "/test.Status/ClientStream"
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client_stream(iter([b"fine", key]), timeout=5)
        _check(refused.value, key)

        bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream("/test.Status/Bidi")
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for reply in bidi(iter([b"fine", key, b"never"]), timeout=5):
                received.append(reply)
        assert received == [b"fine"]
        _check(refused.value, key)

    asyncio.run(_serving(scenario))


def test_calls_without_a_refusal_pass_and_other_exceptions_stay_unknown() -> None:
    async def scenario(channel: grpc.aio.Channel) -> None:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Status/Unary")
        assert await unary(b"hello", timeout=5) == b"hello"
        bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream("/test.Status/Bidi")
        assert [reply async for reply in bidi(iter([b"a", b"b"]), timeout=5)] == [b"a", b"b"]
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await unary(b"crash", timeout=5)
        assert crashed.value.code() == grpc.StatusCode.UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            async for _ in bidi(iter([b"crash"]), timeout=5):
                pass
        assert crashed.value.code() == grpc.StatusCode.UNKNOWN

    asyncio.run(_serving(scenario))


def test_a_relayed_status_keeps_its_code() -> None:
    assert status_name(grpc.StatusCode.FAILED_PRECONDITION) == "FAILED_PRECONDITION"
    assert status_name(grpc.StatusCode.OK) == "UNKNOWN"
    assert all(status_name(code) == code.name for code in grpc.StatusCode if code != grpc.StatusCode.OK)
