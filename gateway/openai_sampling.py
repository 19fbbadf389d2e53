"""The OpenAI dialect's logits options: their types, limits and how they reach `SamplingOptions`.

- `logit_bias`: `{"token id": bias}` with biases in [-100, 100], as OpenAI (keys are the served
  model's token ids; one outside its vocabulary is refused by the engine).
- `presence_penalty`, `frequency_penalty` in [-2, 2], OpenAI's semantics: over the tokens generated
  so far, never the prompt (the last shard uses mlx-lm's processors on the generated tokens).
- `repetition_penalty` (an extension, > 0): mlx-lm's, over the last 20 tokens, prompt included.
- `min_p` (an extension) in [0, 1]; `top_logprobs` 0-20; `n` 1 to `MAX_CHOICES`.
"""

import math
from typing import Annotated, Protocol, cast

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from services.kernel.sampling import MAX_TOP_LOGPROBS, SamplingOptions

MAX_CHOICES = 8
"""Most choices (`n`) per request: each is its own row on the shards, batched with the others."""
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 1024


def _logit_bias_pairs(value: object) -> object:
    """`{"50256": -100}` -> ((50256, -100.0),), refusing keys that are not token ids."""
    if value is None or not isinstance(value, dict):
        return value
    entries = cast(dict[object, object], value)
    if len(entries) > MAX_LOGIT_BIAS_ENTRIES:
        raise PydanticCustomError(
            "invalid_logit_bias", "logit_bias has more than {limit} entries", {"limit": MAX_LOGIT_BIAS_ENTRIES}
        )
    pairs: list[tuple[int, float]] = []
    for key, bias in entries.items():
        if not isinstance(key, str) or not key.isdigit() or not key.isascii():
            raise PydanticCustomError(
                "invalid_logit_bias",
                "logit_bias keys must be token ids (non-negative integers), got {key!r}",
                {"key": key},
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not math.isfinite(bias):
            raise PydanticCustomError("invalid_logit_bias", "logit_bias values must be numbers")
        if abs(bias) > MAX_LOGIT_BIAS:
            raise PydanticCustomError(
                "invalid_logit_bias", "logit_bias values must lie in [-100, 100], got {bias}", {"bias": bias}
            )
        pairs.append((int(key), float(bias)))
    return tuple(pairs)


LogitBias = Annotated[tuple[tuple[int, float], ...] | None, BeforeValidator(_logit_bias_pairs)]
MinP = Annotated[float | None, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
RepetitionPenalty = Annotated[float | None, Field(gt=0.0, le=10.0)]
TopLogprobs = Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)]


class LogitsFields(Protocol):
    """What a dialect's request gives for these options (None: left out)."""

    @property
    def min_p(self) -> float | None: ...
    @property
    def logit_bias(self) -> tuple[tuple[int, float], ...] | None: ...
    @property
    def presence_penalty(self) -> float | None: ...
    @property
    def frequency_penalty(self) -> float | None: ...
    @property
    def repetition_penalty(self) -> float | None: ...


def with_logits_options(sampling: SamplingOptions, fields: LogitsFields, top_logprobs: int | None) -> SamplingOptions:
    """`sampling` with the request's logits options and logprobs (`top_logprobs` None: no logprobs)."""
    return sampling.model_copy(
        update={
            "min_p": fields.min_p or 0.0,
            "logit_bias": fields.logit_bias or (),
            "presence_penalty": fields.presence_penalty or 0.0,
            "frequency_penalty": fields.frequency_penalty or 0.0,
            "repetition_penalty": fields.repetition_penalty or 0.0,
            "logprobs": top_logprobs is not None,
            "top_logprobs": top_logprobs or 0,
        }
    )
