"""Checks of a request's sampling options as the first shard receives them (INVALID_ARGUMENT when bad).

The gateway validates these in each dialect's terms first; this keeps a malformed gRPC caller from
reaching the last shard's sampler with values mlx-lm would raise on (or silently misread).
"""

import math

from services.kernel.sampling import MAX_TOP_LOGPROBS
from strata_wire import common_pb2


def sampling_problem(sampling: common_pb2.SamplingParams, vocab_size: int) -> str | None:
    """What is wrong with the options, or None; token ids are checked against `vocab_size` (0: unknown)."""
    numbers = {
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    for name, value in numbers.items():
        if not math.isfinite(value):
            return f"{name} must be a finite number"
    if not 0 <= sampling.min_p <= 1:
        return "min_p must lie in [0, 1]"
    if sampling.repetition_penalty < 0:
        return "repetition_penalty must not be negative"
    if sampling.repetition_penalty and sampling.repetition_context_size < 1:
        return "repetition_context_size must be at least 1 with a repetition_penalty"
    if not 0 <= sampling.top_logprobs <= MAX_TOP_LOGPROBS:
        return f"top_logprobs must lie in [0, {MAX_TOP_LOGPROBS}]"
    if sampling.top_logprobs and not sampling.logprobs:
        return "top_logprobs needs logprobs"
    bias_tokens = [entry.token_id for entry in sampling.logit_bias]
    if len(set(bias_tokens)) != len(bias_tokens):
        return "logit_bias names a token id twice"
    if not all(math.isfinite(entry.bias) for entry in sampling.logit_bias):
        return "logit_bias values must be finite numbers"
    limit = vocab_size if vocab_size else 2**31
    if any(not 0 <= token < limit for token in [*bias_tokens, *sampling.penalty_prompt_tokens]):
        return f"logit_bias and penalty_prompt_tokens token ids must lie in [0, {vocab_size})"
    return None
