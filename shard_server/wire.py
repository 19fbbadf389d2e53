"""Conversions between protobuf messages and the shard's domain messages (the only place that does)."""

import math

from services.kernel.compute_dtype import ComputeDtypeChoice, parse_compute_dtype_choice
from services.kernel.devices import DeviceKind
from services.kernel.ids import RequestId, ShardId
from services.kernel.status_errors import InvalidArgumentError
from services.models.model_fetch import FetchedBytes
from services.platform.tensor_codec import EncodedTensor
from services.wire.generate_call import logprobs_from_pb, logprobs_to_pb, sampling_from_pb, sampling_to_pb
from services.wire.grammar_validation import grammar_problem
from shard_server.admission import AdmissionStats
from shard_server.ring_messages import (
    BatchStep,
    ClientEvent,
    FailRequest,
    ForgetPrefix,
    ReleaseRequest,
    RequestFailed,
    RequestFinished,
    RingMessage,
    SampledToken,
    SampledTokens,
    Segment,
    StartRequest,
    TokenGenerated,
)
from shard_server.sampling_checks import sampling_problem
from shard_server.stage_state import StageStats
from strata_wire import common_pb2, coordinator_pb2, shard_pb2


class WireError(InvalidArgumentError, ValueError):
    """A message is malformed (missing body, out-of-range field); a call answers it INVALID_ARGUMENT."""


def check_assign_request(message: shard_pb2.AssignRequest) -> ComputeDtypeChoice:
    """The compute dtype of a coordinator's instructions ("auto": the shard's device decides); raises
    `WireError` for malformed ones, so they are refused before anything changes (the current stage
    keeps serving)."""
    if not message.instance_id or not message.model_id:
        raise WireError("instance_id and model_id are required")
    if not 0 <= message.start_layer < message.end_layer <= message.num_layers:
        raise WireError(
            f"layers [{message.start_layer}, {message.end_layer}) of {message.num_layers} are not a "
            "non-empty range inside the model"
        )
    if message.ring_size < 0:
        raise WireError("ring_size must not be negative")
    if message.kv_budget_bytes_per_layer < 0:
        raise WireError("kv_budget_bytes_per_layer must not be negative")
    if message.kv_max_sequences < 0:
        raise WireError("kv_max_sequences must not be negative")
    if not message.next_address and message.ring_size > 1:
        raise WireError("next_address is required in a ring of several shards")
    if message.prefill_step_size < 1:
        raise WireError("prefill_step_size must be at least 1")
    try:
        return parse_compute_dtype_choice(message.compute_dtype or "stored")
    except ValueError as error:
        raise WireError(str(error)) from error


def assign_reply_to_pb(weight_bytes: int) -> shard_pb2.AssignReply:
    return shard_pb2.AssignReply(weight_bytes=weight_bytes)


def _generate_problem(message: shard_pb2.GenerateRequest, vocab_size: int) -> str | None:
    if not message.request_id:
        return "request_id is required"
    if not message.prompt_tokens:
        return "prompt_tokens must not be empty"
    if message.max_tokens < 1:
        return "max_tokens must be at least 1"
    if vocab_size and any(not 0 <= token < vocab_size for token in message.prompt_tokens):
        return f"prompt token ids must lie in [0, {vocab_size})"
    if vocab_size and any(not 0 <= token < vocab_size for token in message.replay_tokens):
        return f"replay token ids must lie in [0, {vocab_size})"
    if len(message.replay_tokens) > message.max_tokens:
        return "replay_tokens must not be more than max_tokens"
    sampling = message.sampling
    if sampling.temperature < 0:
        return "temperature must not be negative"
    if not 0 <= sampling.top_p <= 1:
        return "top_p must lie in [0, 1]"
    if sampling.top_k < 0:
        return "top_k must not be negative"
    if message.sampling.grammar and (problem := grammar_problem(message.sampling.grammar)) is not None:
        return f"grammar refused: {problem}"
    return sampling_problem(message.sampling, vocab_size)


def start_request_from_pb(message: shard_pb2.GenerateRequest, vocab_size: int = 0) -> StartRequest:
    """A gateway's request, replay tokens included; raises `WireError` for a malformed one (token ids
    checked against `vocab_size`, 0: not known yet)."""
    problem = _generate_problem(message, vocab_size)
    if problem is not None:
        raise WireError(problem)
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
        grammar_replay_tokens=segment.grammar_replay_tokens,
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
        tuple(message.grammar_replay_tokens),
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
                        request_id=token.request_id,
                        token_id=token.token_id,
                        position=token.position,
                        logprob=token.logprob,
                        top_logprobs=logprobs_to_pb(token.top_logprobs),
                        embedding=token.embedding,
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
        case FailRequest():
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
            SampledToken(
                RequestId(token.request_id),
                token.token_id,
                token.position,
                token.logprob if token.HasField("logprob") else None,
                logprobs_from_pb(token.top_logprobs),
                token.embedding,
            )
            for token in message.tokens.tokens
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
        return FailRequest(request_id, message.failure.message)
    raise WireError("ring message without a body")


def ring_refusal_to_pb(request_id: str, error: WireError) -> shard_pb2.RingReply:
    """A ring message refused on its own stream: the sender fails the request."""
    return shard_pb2.RingReply(request_id=request_id, error=str(error))


def stats_to_pb(
    shard_id: ShardId, stats: StageStats, admission: AdmissionStats, fetched: FetchedBytes | None = None
) -> shard_pb2.ShardStats:
    return shard_pb2.ShardStats(
        shard_id=shard_id,
        instance_id=stats.instance_id or "",
        start_layer=stats.start_layer,
        end_layer=stats.end_layer,
        active_requests=stats.active_requests,
        kv_cache_bytes=stats.kv_cache_bytes,
        steps=stats.steps,
        batched_rows=stats.batched_rows,
        batch_invariant=stats.batch_invariant,
        batched_layers=stats.batched_layers,
        native_attention=stats.native_attention,
        weight_bytes=stats.weight_bytes,
        compact_weight_matrices=stats.compact_weight_matrices,
        compute_seconds=stats.compute_seconds,
        ring_seconds=stats.ring_seconds,
        ring_samples=stats.ring_samples,
        prefix_cache_bytes=stats.prefix_cache_bytes,
        prefix_hits=stats.prefix_hits,
        reused_prompt_tokens=stats.reused_prompt_tokens,
        replayed_tokens=stats.replayed_tokens,
        replay_divergences=stats.replay_divergences,
        hop_overhead_p50_seconds=stats.hop_overhead_percentile(50),
        hop_overhead_p99_seconds=stats.hop_overhead_percentile(99),
        waiting_requests=admission.waiting_requests,
        rejected_requests=admission.rejected_requests,
        kv_budget_tokens=admission.kv_budget_tokens or 0,
        reserved_kv_tokens=admission.reserved_tokens,
        fetched_bytes_from_peers=fetched.from_peers if fetched else 0,
        fetched_bytes_from_hub=fetched.from_hub if fetched else 0,
    )


def registration_to_pb(
    *,
    shard_id: ShardId,
    node_id: str,
    address: str,
    available_memory_bytes: int,
    incarnation: str,
    device: DeviceKind,
    work_per_second: float,
    metrics_address: str = "",
    fetched: FetchedBytes | None = None,
    host_memory_total_bytes: int = 0,
    host_memory_free_bytes: int = 0,
) -> coordinator_pb2.RegisterShardRequest:
    """This shard server, as it announces itself to the coordinator (with the model bytes it fetched)."""
    return coordinator_pb2.RegisterShardRequest(
        host_memory_total_bytes=host_memory_total_bytes,
        host_memory_free_bytes=host_memory_free_bytes,
        shard_id=shard_id,
        node_id=node_id,
        address=address,
        available_memory_bytes=available_memory_bytes,
        device=device,
        incarnation=incarnation,
        metrics_address=metrics_address,
        work_per_second=work_per_second,
        fetched_bytes_from_peers=fetched.from_peers if fetched else 0,
        fetched_bytes_from_hub=fetched.from_hub if fetched else 0,
    )


def client_event_to_pb(event: ClientEvent) -> shard_pb2.GenerateReply:
    match event:
        case TokenGenerated():
            token = shard_pb2.GeneratedToken(
                token_id=event.token_id,
                index=event.index,
                logprob=event.logprob,
                top_logprobs=logprobs_to_pb(event.top_logprobs),
                embedding=event.embedding,
            )
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
