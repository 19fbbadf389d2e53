"""What a gateway and a first shard agree on for a `Generate` call, beside the protobuf itself.

The sampling options travel as `SamplingParams` (converted only here), and a shard that refuses a
request for load says when to retry in the `retry-after-seconds` trailing metadata key.
"""

from collections.abc import Iterable

from services.kernel.sampling import SamplingOptions
from strata_wire import common_pb2

RETRY_AFTER_METADATA = "retry-after-seconds"
# What a caller waits when a refusal names no time (an older shard, or a malformed value).
DEFAULT_RETRY_AFTER_SECONDS = 2


def sampling_from_pb(message: common_pb2.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        temperature=message.temperature,
        top_p=message.top_p,
        top_k=message.top_k,
        min_p=message.min_p,
        seed=message.seed,
        key_position=message.key_position,
        logit_bias=tuple((entry.token_id, entry.bias) for entry in message.logit_bias),
        repetition_penalty=message.repetition_penalty,
        repetition_context_size=message.repetition_context_size,
        presence_penalty=message.presence_penalty,
        frequency_penalty=message.frequency_penalty,
        logprobs=message.logprobs,
        top_logprobs=message.top_logprobs,
        penalty_prompt_tokens=tuple(message.penalty_prompt_tokens),
        return_embedding=message.return_embedding,
        grammar=message.grammar or None,
    )


def sampling_to_pb(options: SamplingOptions) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        seed=options.seed,
        key_position=options.key_position,
        logit_bias=[common_pb2.SamplingLogitBias(token_id=token, bias=bias) for token, bias in options.logit_bias],
        repetition_penalty=options.repetition_penalty,
        repetition_context_size=options.repetition_context_size,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        logprobs=options.logprobs,
        top_logprobs=options.top_logprobs,
        penalty_prompt_tokens=list(options.penalty_prompt_tokens),
        return_embedding=options.return_embedding,
        grammar=options.grammar or "",
    )


def logprobs_to_pb(logprobs: tuple[tuple[int, float], ...]) -> list[common_pb2.SampledTokenLogprob]:
    return [common_pb2.SampledTokenLogprob(token_id=token, logprob=logprob) for token, logprob in logprobs]


def logprobs_from_pb(messages: Iterable[common_pb2.SampledTokenLogprob]) -> tuple[tuple[int, float], ...]:
    return tuple((message.token_id, message.logprob) for message in messages)
