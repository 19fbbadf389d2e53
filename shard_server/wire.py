"""Conversions between protobuf messages and the shard's domain messages (the only place that does)."""

from services.ids import RequestId
from services.sampling import SamplingOptions
from services.tensor_codec import EncodedTensor
from shard_server.ring_messages import (
    ClientEvent,
    ForwardStep,
    ReleaseRequest,
    RequestFailed,
    RequestFailure,
    RequestFinished,
    RingMessage,
    SampledToken,
    TokenGenerated,
)
from strata_wire import common_pb2, shard_pb2


class WireError(ValueError):
    """A message is malformed (missing body, out-of-range field)."""


def sampling_from_pb(message: common_pb2.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        temperature=message.temperature,
        top_p=message.top_p,
        top_k=message.top_k,
        seed=message.seed,
        key_position=message.key_position,
    )


def sampling_to_pb(options: SamplingOptions) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        key_position=options.key_position,
    )


def tensor_from_pb(message: common_pb2.Tensor) -> EncodedTensor:
    return EncodedTensor(dtype=message.dtype, shape=tuple(message.shape), data=message.data)


def tensor_to_pb(tensor: EncodedTensor) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=tensor.dtype, shape=list(tensor.shape), data=tensor.data)


def ring_message_to_pb(message: RingMessage) -> shard_pb2.RingMessage:
    match message:
        case ForwardStep():
            step = shard_pb2.ForwardStep(
                position=message.position, sample=message.sample, hidden=tensor_to_pb(message.hidden)
            )
            if message.sampling is not None:
                step.sampling.CopyFrom(sampling_to_pb(message.sampling))
            return shard_pb2.RingMessage(request_id=message.request_id, step=step)
        case SampledToken():
            token = shard_pb2.SampledToken(token_id=message.token_id, position=message.position)
            return shard_pb2.RingMessage(request_id=message.request_id, token=token)
        case ReleaseRequest():
            return shard_pb2.RingMessage(request_id=message.request_id, release=shard_pb2.ReleaseRequest())
        case RequestFailure():
            failure = shard_pb2.RequestFailure(message=message.message)
            return shard_pb2.RingMessage(request_id=message.request_id, failure=failure)


def ring_message_from_pb(message: shard_pb2.RingMessage) -> RingMessage:
    request_id = RequestId(message.request_id)
    if not request_id:
        raise WireError("ring message without a request_id")
    body = message.WhichOneof("body")
    if body == "step":
        step = message.step
        if step.position < 0:
            raise WireError(f"negative position {step.position}")
        sampling = sampling_from_pb(step.sampling) if step.HasField("sampling") else None
        return ForwardStep(request_id, step.position, step.sample, tensor_from_pb(step.hidden), sampling)
    if body == "token":
        return SampledToken(request_id, message.token.token_id, message.token.position)
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
