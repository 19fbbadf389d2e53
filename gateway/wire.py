"""Conversions between the gateway's token types and the shard protobuf (the only place that does)."""

from collections.abc import Sequence

from gateway.token_source import GeneratedToken, GenerationFinished, TokenEvent, TokenRequest
from services.kernel.ids import RequestId
from services.wire.generate_call import logprobs_from_pb, sampling_to_pb
from strata_wire import shard_pb2


def generate_request_to_pb(
    request: TokenRequest, call_id: RequestId, instance_id: str, replay_tokens: Sequence[int]
) -> shard_pb2.GenerateRequest:
    """`request` as call `call_id` on an instance's first shard, after `replay_tokens` (already generated)."""
    return shard_pb2.GenerateRequest(
        request_id=call_id,
        instance_id=instance_id,
        prompt_tokens=list(request.prompt_tokens),
        max_tokens=request.max_tokens,
        stop_token_ids=list(request.stop_token_ids),
        sampling=sampling_to_pb(request.sampling),
        replay_tokens=list(replay_tokens),
    )


def token_event_from_pb(reply: shard_pb2.GenerateReply) -> TokenEvent | None:
    """A token or the end of the generation; None for a reply without a body (ignored)."""
    body = reply.WhichOneof("body")
    if body == "token":
        token = reply.token
        return GeneratedToken(
            token_id=token.token_id,
            logprob=token.logprob if token.HasField("logprob") else None,
            top_logprobs=logprobs_from_pb(token.top_logprobs),
            embedding=token.embedding,
        )
    if body == "finished":
        finished = reply.finished
        reason = "stop" if finished.reason == "stop" else "length"
        return GenerationFinished(
            reason=reason, prompt_tokens=finished.prompt_tokens, generated_tokens=finished.generated_tokens
        )
    return None
