"""The gateway's `TokenSource`: streams a request through the first shard of a ready instance.

`generate` recovers from a broken pipeline (`gateway.recovery`); `generate_on` is one run, one gRPC
call to one instance's first shard.
"""

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from gateway.cluster_view import ClusterView, ReadyInstance
from gateway.instance_activity import InstanceActivity
from gateway.recovery import RecoveringTokenSource, RecoveryCounts, RecoveryPolicy
from gateway.token_source import (
    GeneratedToken,
    GenerationFinished,
    OverloadedError,
    PipelineError,
    TokenEvent,
    TokenRequest,
)
from gateway.wire import generate_request_to_pb, token_event_from_pb
from services.kernel.ids import RequestId
from services.platform.grpc_server import cluster_channel
from services.platform.request_context import request_id_metadata
from services.wire.generate_call import DEFAULT_RETRY_AFTER_SECONDS, RETRY_AFTER_METADATA
from strata_wire import shard_pb2, shard_pb2_grpc

TOKEN_TIMEOUT_SECONDS = 300.0
"""Longest wait for the next token (the first one includes the whole prefill) before giving up."""

REFUSALS = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Statuses that refuse the request itself: running it again would not help."""


class PipelineClient:
    def __init__(
        self,
        view: ClusterView,
        token_timeout_seconds: float = TOKEN_TIMEOUT_SECONDS,
        recovery: RecoveryPolicy | None = None,
        activity: InstanceActivity | None = None,
    ) -> None:
        self._view = view
        self.activity = activity if activity is not None else InstanceActivity()
        self._token_timeout_seconds = token_timeout_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._recovering = RecoveringTokenSource(self, view, recovery or RecoveryPolicy.from_environment())

    def _stub(self, address: str) -> "shard_pb2_grpc.ShardAsyncStub":
        channel = self._channels.get(address)
        if channel is None:
            channel = cluster_channel(address)
            self._channels[address] = channel
        return shard_pb2_grpc.ShardStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def recovery_counts(self) -> RecoveryCounts:
        return self._recovering.counts

    def generate(self, request: TokenRequest) -> AsyncIterator[TokenEvent]:
        """The gateway's `TokenSource`: runs the request, recovering from a broken pipeline."""
        return self._recovering.generate(request)

    async def generate_on(
        self, instance: ReadyInstance, request: TokenRequest, call_id: RequestId, replay_tokens: Sequence[int]
    ) -> AsyncIterator[TokenEvent]:
        """Runs `request` on `instance` as call `call_id`; after `replay_tokens` (already generated),
        yields only the tokens that follow them. Closing the iterator cancels the call."""
        call = self._stub(instance.first_shard_address).Generate(
            generate_request_to_pb(request, call_id, instance.instance_id, replay_tokens),
            metadata=request_id_metadata(),  # the HTTP request's id, for the shard's log lines
        )
        self.activity.request_started(instance.instance_id)
        try:
            while True:
                try:
                    # A timeout scope, not wait_for: no task created per token.
                    async with asyncio.timeout(self._token_timeout_seconds):
                        reply = await call.read()
                except TimeoutError as error:
                    raise PipelineError(
                        f"request {call_id}: no token from instance {instance.instance_id} "
                        f"within {self._token_timeout_seconds:.0f} s"
                    ) from error
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise _overloaded(error) from error
                    raise PipelineError(
                        f"request {call_id} on instance {instance.instance_id} failed: "
                        f"{error.code().name} {error.details()}",
                        retryable=error.code() not in REFUSALS,
                    ) from error
                if not isinstance(reply, shard_pb2.GenerateReply):
                    raise PipelineError(f"request {call_id}: the shard pipeline ended it without finishing it")
                event = token_event_from_pb(reply)
                if isinstance(event, GeneratedToken):
                    self.activity.tokens_streamed(instance.instance_id)
                if event is not None:
                    yield event
                if isinstance(event, GenerationFinished):
                    return
        finally:
            self.activity.request_ended(instance.instance_id)
            call.cancel()


def _overloaded(error: grpc.aio.AioRpcError) -> OverloadedError:
    """The first shard's admission refusal, with its retry hint (trailing metadata)."""
    retry_after = DEFAULT_RETRY_AFTER_SECONDS
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA and isinstance(value, str) and value.isdigit():
            retry_after = int(value)
    return OverloadedError(error.details() or "the model instance is at its admission limit", retry_after)
