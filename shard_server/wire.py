"""Conversions between protobuf messages and the shard's domain messages (the only place that does)."""

import math

from services.kernel.ids import RequestId
from services.platform.tensor_codec import EncodedTensor
from services.wire.generate_call import sampling_from_pb, sampling_to_pb
from shard_server.ring_messages import (
    BatchStep,
    ClientEvent,
    ForgetPrefix,
    ReleaseRequest,
    RequestFailed,
    RequestFailure,
    RequestFinished,
    RingMessage,
    SampledToken,
    SampledTokens,
    Segment,
    StartRequest,
    TokenGenerated,
)
from strata_wire import common_pb2, shard_pb2


class WireError(ValueError):
    """A message is malformed (missing body, out-of-range field)."""


def start_request_from_pb(message: shard_pb2.GenerateRequest) -> StartRequest:
    """A gateway's request (already validated by the service), replay tokens included."""
    return StartRequest(
        RequestId(message.request_id),
        tuple(message.prompt_tokens),
        message.max_tokens,
        frozenset(message.stop_token_ids),
        sampling_from_pb(message.sampling),
        tuple(message.replay_tokens),
    )


def tensor_from_pb(message: common_pb2.Tensor) -> EncodedTensor:
    return EncodedTensor(dtype=message.dtype, shape=tuple(message.shape), data=message.data)


def tensor_to_pb(tensor: EncodedTensor) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=tensor.dtype, shape=list(tensor.shape), data=tensor.data)


def _segment_to_pb(segment: Segment) -> shard_pb2.StepSegment:
    message = shard_pb2.StepSegment(
        request_id=segment.request_id,
        position=segment.position,
        length=segment.length,
        sample=segment.sample,
        store_prefix=segment.store_prefix or "",
        reuse_prefix=segment.reuse_prefix or "",
    )
    if segment.sampling is not None:
        message.sampling.CopyFrom(sampling_to_pb(segment.sampling))
    return message


def _segment_from_pb(message: shard_pb2.StepSegment) -> Segment:
    if not message.request_id:
        raise WireError("batch segment without a request_id")
    if message.position < 0 or message.length < 1:
        raise WireError(f"segment of {message.request_id} has position {message.position}, length {message.length}")
    sampling = sampling_from_pb(message.sampling) if message.HasField("sampling") else None
    return Segment(
        RequestId(message.request_id),
        message.position,
        message.length,
        message.sample,
        sampling,
        message.store_prefix or None,
        message.reuse_prefix or None,
    )


def ring_message_to_pb(message: RingMessage) -> shard_pb2.RingMessage:
    match message:
        case BatchStep():
            batch = shard_pb2.BatchStep(
                segments=[_segment_to_pb(segment) for segment in message.segments],
                hidden=tensor_to_pb(message.hidden),
                compute_seconds=message.compute_seconds,
            )
            return shard_pb2.RingMessage(batch=batch)
        case SampledTokens():
            tokens = shard_pb2.SampledTokens(
                tokens=[
                    shard_pb2.SampledToken(
                        request_id=token.request_id, token_id=token.token_id, position=token.position
                    )
                    for token in message.tokens
                ],
                compute_seconds=message.compute_seconds,
            )
            return shard_pb2.RingMessage(tokens=tokens)
        case ForgetPrefix():
            return shard_pb2.RingMessage(forget_prefix=shard_pb2.ForgetPrefix(key=message.key))
        case ReleaseRequest():
            return shard_pb2.RingMessage(request_id=message.request_id, release=shard_pb2.ReleaseRequest())
        case RequestFailure():
            failure = shard_pb2.RequestFailure(message=message.message)
            return shard_pb2.RingMessage(request_id=message.request_id, failure=failure)


def ring_message_from_pb(message: shard_pb2.RingMessage) -> RingMessage:
    body = message.WhichOneof("body")
    if body == "batch":
        segments = tuple(_segment_from_pb(segment) for segment in message.batch.segments)
        if not segments:
            raise WireError("batch without segments")
        return BatchStep(segments, tensor_from_pb(message.batch.hidden), _seconds(message.batch.compute_seconds))
    if body == "tokens":
        tokens = tuple(
            SampledToken(RequestId(token.request_id), token.token_id, token.position) for token in message.tokens.tokens
        )
        if not all(token.request_id for token in tokens):
            raise WireError("sampled token without a request_id")
        return SampledTokens(tokens, _seconds(message.tokens.compute_seconds))
    if body == "forget_prefix":
        if not message.forget_prefix.key:
            raise WireError("forget_prefix without a key")
        return ForgetPrefix(message.forget_prefix.key)
    request_id = RequestId(message.request_id)
    if not request_id:
        raise WireError("ring message without a request_id")
    if body == "release":
        return ReleaseRequest(request_id)
    if body == "failure":
        return RequestFailure(request_id, message.failure.message)
    raise WireError("ring message without a body")


def client_event_to_pb(event: ClientEvent) -> shard_pb2.GenerateReply:
    match event:
        case TokenGenerated():
            token = shard_pb2.GeneratedToken(token_id=event.token_id, index=event.index)
            return shard_pb2.GenerateReply(token=token)
        case RequestFinished():
            finished = shard_pb2.GenerationFinished(
                reason=event.reason,
                prompt_tokens=event.prompt_tokens,
                generated_tokens=event.generated_tokens,
            )
            return shard_pb2.GenerateReply(finished=finished)
        case RequestFailed():
            raise WireError("failures travel as gRPC statuses, not replies")


def _seconds(value: float) -> float:
    """A duration from a peer, for statistics only: anything but a finite non-negative number counts as 0."""
    return value if math.isfinite(value) and value >= 0 else 0.0
