"""Undecodable request bytes get INVALID_ARGUMENT from a real in-process server (not grpc's UNKNOWN),
for unary and streaming methods; well-formed requests pass through unchanged."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.platform.grpc_decode import MalformedRequestInterceptor
from services.platform.status_interceptor import StatusErrorInterceptor
from strata_wire import shard_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
MALFORMED = b"\x00"  # field number 0: never valid protobuf


async def _ring(requests: AsyncIterator[shard_pb2.RingMessage], context: object) -> AsyncIterator[shard_pb2.RingReply]:
    async for message in requests:
        yield shard_pb2.RingReply(request_id=message.request_id, error="echo")


async def _server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[StatusErrorInterceptor(), MalformedRequestInterceptor()])  # as GrpcServer
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    ring = grpc.stream_stream_rpc_method_handler(
        _ring,
        request_deserializer=shard_pb2.RingMessage.FromString,
        response_serializer=shard_pb2.RingReply.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strata.v1.Shard", {"Ring": ring}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_malformed_requests_get_invalid_argument_and_good_ones_pass() -> None:
    async def scenario() -> None:
        server, address = await _server()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(HEALTH_CHECK)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await check(MALFORMED, timeout=5)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "does not parse" in (refused.value.details() or "")
                reply = health_pb2.HealthCheckResponse.FromString(
                    await check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=5)
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

                ring: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream("/strata.v1.Shard/Ring")
                good = shard_pb2.RingMessage(request_id="r1").SerializeToString()
                replies = [shard_pb2.RingReply.FromString(raw) async for raw in ring(iter([good]), timeout=5)]
                assert [reply.request_id for reply in replies] == ["r1"]
                call = ring(iter([good, MALFORMED]), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as stream_refused:
                    async for _ in call:
                        pass
                assert stream_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await server.stop(None)

    asyncio.run(scenario())
