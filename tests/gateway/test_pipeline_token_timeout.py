"""A first shard that stops streaming tokens mid-request: the gateway's call gives up after its token
timeout with a retryable PipelineError, against a real in-process gRPC server."""

import asyncio

import grpc
import pytest

from gateway.cluster_view import ClusterView, ReadyInstance
from gateway.pipeline_client import PipelineClient
from gateway.token_source import GeneratedToken, PipelineError, TokenRequest
from services.kernel.ids import InstanceId, ModelId, RequestId
from services.kernel.sampling import SamplingOptions
from strata_wire import shard_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class _StallingShard:
    """Generate answers one token, then never again (a shard stuck mid-request)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def Generate(self, request: shard_pb2.GenerateRequest, context: object) -> object:
        yield shard_pb2.GenerateReply(token=shard_pb2.GeneratedToken(token_id=7, index=0))
        await self.release.wait()


async def _serve(shard: _StallingShard) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        shard.Generate,
        request_deserializer=shard_pb2.GenerateRequest.FromString,
        response_serializer=shard_pb2.GenerateReply.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strata.v1.Shard", {"Generate": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_a_stalled_stream_fails_after_the_token_timeout() -> None:
    async def scenario() -> tuple[list[int], str, bool]:
        shard = _StallingShard()
        server, address = await _serve(shard)
        client = PipelineClient(ClusterView(address), token_timeout_seconds=0.5)
        request = TokenRequest(
            request_id=RequestId("stalled"),
            model_id=ModelId("smollm2-135m-instruct"),
            prompt_tokens=(1, 2, 3),
            max_tokens=8,
            sampling=SamplingOptions(),
            stop_token_ids=(),
        )
        tokens: list[int] = []
        try:
            with pytest.raises(PipelineError) as raised:
                async for event in client.generate_on(
                    ReadyInstance(InstanceId("instance-1"), address), request, RequestId("stalled"), ()
                ):
                    if isinstance(event, GeneratedToken):
                        tokens.append(event.token_id)
            return tokens, str(raised.value), raised.value.retryable
        finally:
            shard.release.set()
            await client.close()
            await server.stop(0)

    tokens, message, retryable = asyncio.run(scenario())
    assert tokens == [7]
    assert message == "request stalled: no token from instance instance-1 within 0 s"  # the limit, rounded
    assert retryable
