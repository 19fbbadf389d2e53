"""The gateway's TokenSource: streams a request through the first shard of a ready instance."""

import asyncio
from collections.abc import AsyncIterator

import grpc

from gateway.cluster_view import ClusterView
from gateway.token_source import (
    GeneratedToken,
    GenerationFinished,
    ModelUnavailableError,
    PipelineError,
    TokenEvent,
    TokenRequest,
)
from services.grpc_server import insecure_channel
from shard_server.wire import sampling_to_pb
from strata_wire import shard_pb2, shard_pb2_grpc

TOKEN_TIMEOUT_SECONDS = 300.0
"""Longest wait for the next token (the first one includes the whole prefill) before giving up."""


class PipelineClient:
    def __init__(self, view: ClusterView, token_timeout_seconds: float = TOKEN_TIMEOUT_SECONDS) -> None:
        self._view = view
        self._token_timeout_seconds = token_timeout_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> "shard_pb2_grpc.ShardAsyncStub":
        channel = self._channels.get(address)
        if channel is None:
            channel = insecure_channel(address)
            self._channels[address] = channel
        return shard_pb2_grpc.ShardStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def generate(self, request: TokenRequest) -> AsyncIterator[TokenEvent]:
        instance = self._view.ready_instance(request.model_id)
        if instance is None:
            raise ModelUnavailableError(f"no instance of {request.model_id} is ready yet")
        call = self._stub(instance.first_shard_address).Generate(
            shard_pb2.GenerateRequest(
                request_id=request.request_id,
                instance_id=instance.instance_id,
                prompt_tokens=list(request.prompt_tokens),
                max_tokens=request.max_tokens,
                stop_token_ids=list(request.stop_token_ids),
                sampling=sampling_to_pb(request.sampling),
            )
        )
        try:
            while True:
                try:
                    reply = await asyncio.wait_for(call.read(), timeout=self._token_timeout_seconds)
                except TimeoutError as error:
                    raise PipelineError(f"no token within {self._token_timeout_seconds:.0f} s") from error
                except grpc.aio.AioRpcError as error:
                    raise PipelineError(f"the shard pipeline failed: {error.details()}") from error
                if not isinstance(reply, shard_pb2.GenerateReply):
                    raise PipelineError("the shard pipeline ended the request without finishing it")
                body = reply.WhichOneof("body")
                if body == "token":
                    yield GeneratedToken(token_id=reply.token.token_id)
                elif body == "finished":
                    finished = reply.finished
                    reason = "stop" if finished.reason == "stop" else "length"
                    yield GenerationFinished(
                        reason=reason,
                        prompt_tokens=finished.prompt_tokens,
                        generated_tokens=finished.generated_tokens,
                    )
                    return
        finally:
            call.cancel()
