"""Logits processors, min_p and logprobs on the last shard: bitwise mlx-lm's `generate_step` semantics.

The reference runs mlx-lm's own `make_sampler` and `make_logits_processors` the way `generate_step`
does (processors on the tokens so far, then `x - logsumexp(x)`, then the sampler); OpenAI's presence
and frequency penalties are mlx-lm's processors over the generated tokens only.
"""

import math
from collections.abc import Callable

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import (
    make_frequency_penalty,
    make_logits_processors,
    make_presence_penalty,
    make_sampler,
)

from services.kernel.sampling import SamplingOptions
from services.platform.mlx_typing import scalar_int, to_float_list
from shard_server.sampler import RequestSampler, SampledChoice, sample_rows

pytestmark = pytest.mark.unit

VOCAB = 64
STEPS = 20
PROMPT = (3, 5, 5, 9, 12, 40, 41, 3)

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

SETTINGS = {
    "greedy, logit bias": SamplingOptions(logit_bias=((7, 5.0), (11, -100.0), (2, 0.25))),
    "greedy, repetition penalty": SamplingOptions(repetition_penalty=1.3, repetition_context_size=6),
    "greedy, presence and frequency": SamplingOptions(presence_penalty=0.8, frequency_penalty=0.6),
    "sampled, min_p": SamplingOptions(temperature=0.9, min_p=0.1, seed=4),
    "sampled, everything": SamplingOptions(
        temperature=1.1,
        top_p=0.9,
        top_k=12,
        min_p=0.05,
        seed=9,
        logit_bias=((1, 2.0),),
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=0.3,
    ),
    "sampled, frequency only": SamplingOptions(temperature=0.7, frequency_penalty=1.5, seed=1),
}


def random_logits(seed: int) -> list[mx.array]:
    key = mx.random.key(500 + seed)
    steps: list[mx.array] = []
    for _ in range(STEPS):
        key, draw = mx.random.split(key)
        steps.append(2.0 * mx.random.normal((1, 1, VOCAB), key=draw))
    return steps


def generated_only(processor: LogitsProcessor, prompt_length: int) -> LogitsProcessor:
    return lambda tokens, logits: processor(tokens[prompt_length:], logits)


def mlx_lm_run(options: SamplingOptions, logits: list[mx.array]) -> list[tuple[int, mx.array]]:
    """(token, logprobs) per step, as generate_step yields them, with mlx-lm's processors and sampler."""
    mx.random.seed(options.seed)
    sampler = make_sampler(options.temperature, options.top_p, options.min_p, top_k=options.top_k)
    processors: list[LogitsProcessor] = make_logits_processors(
        logit_bias=dict(options.logit_bias) or None,
        repetition_penalty=options.repetition_penalty or None,
        repetition_context_size=options.repetition_context_size,
    )
    if options.presence_penalty:
        processors.append(generated_only(make_presence_penalty(options.presence_penalty, 10**6), len(PROMPT)))
    if options.frequency_penalty:
        processors.append(generated_only(make_frequency_penalty(options.frequency_penalty, 10**6), len(PROMPT)))
    tokens = mx.array(PROMPT)
    results: list[tuple[int, mx.array]] = []
    for step_logits in logits:
        last = step_logits[:, -1, :]
        for processor in processors:
            last = processor(tokens, last)
        logprobs = last - mx.logsumexp(last, keepdims=True)
        token = sampler(logprobs)
        results.append((scalar_int(token), logprobs.squeeze(0)))
        tokens = mx.concat([tokens, token])
    return results


def strata_run(options: SamplingOptions, logits: list[mx.array]) -> list[SampledChoice]:
    sampler = RequestSampler(options.with_prompt(PROMPT))
    return [sampler.sample_choice(step_logits) for step_logits in logits]


@pytest.mark.parametrize("name", SETTINGS)
def test_tokens_and_logprobs_are_mlx_lms_bitwise(name: str) -> None:
    options = SETTINGS[name].model_copy(update={"logprobs": True, "top_logprobs": 5})
    logits = random_logits(len(name))

    expected = mlx_lm_run(options, logits)
    actual = strata_run(options, logits)

    assert [choice.token_id for choice in actual] == [token for token, _ in expected]
    for choice, (token, logprobs) in zip(actual, expected, strict=True):
        values = to_float_list(logprobs)
        assert choice.logprob == values[token]  # bitwise: both float32 values as Python floats
        best = sorted(range(VOCAB), key=lambda index: (-values[index], index))[:5]
        assert choice.top_logprobs == tuple((index, values[index]) for index in best)


@pytest.mark.parametrize("name", SETTINGS)
def test_the_processors_change_the_outcome(name: str) -> None:
    # Guards the comparison above: without its processors and filters the run differs somewhere.
    logits = random_logits(len(name))
    plain = SamplingOptions(temperature=SETTINGS[name].temperature, seed=SETTINGS[name].seed)

    assert [token for token, _ in mlx_lm_run(SETTINGS[name], logits)] != [
        token for token, _ in mlx_lm_run(plain, logits)
    ]


def test_top_logprobs_are_sorted_and_their_probabilities_sum_to_at_most_one() -> None:
    options = SamplingOptions(temperature=1.0, seed=2, logprobs=True, top_logprobs=20)
    for choice in strata_run(options, random_logits(3)):
        values = [logprob for _, logprob in choice.top_logprobs]
        assert len(values) == 20
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(value) for value in values) <= 1 + 1e-6
        assert choice.logprob is not None and choice.logprob <= values[0]


def test_without_logprobs_nothing_is_reported() -> None:
    choice = strata_run(SamplingOptions(presence_penalty=1.0), random_logits(1))[0]

    assert choice.logprob is None and choice.top_logprobs == ()


def test_rows_with_processors_in_a_batch_draw_what_they_draw_alone() -> None:
    options = [
        SamplingOptions(),
        SETTINGS["greedy, presence and frequency"],
        SamplingOptions(logprobs=True),
        SETTINGS["sampled, everything"],
        SETTINGS["greedy, logit bias"],
    ]
    batched = [RequestSampler(option.with_prompt(PROMPT)) for option in options]
    alone = [RequestSampler(option.with_prompt(PROMPT)) for option in options]
    for step_logits in random_logits(8):
        step = mx.concatenate([step_logits] * len(options), axis=1)  # (1, rows, vocab)
        expected = [sampler.sample_choice(step[:, row : row + 1]) for row, sampler in enumerate(alone)]

        assert sample_rows(batched, step) == expected


def test_the_repetition_penalty_window_takes_the_prompts_tail_only() -> None:
    options = SamplingOptions(repetition_penalty=1.5, repetition_context_size=3)

    assert options.with_prompt(PROMPT).penalty_prompt_tokens == PROMPT[-3:]
    assert SamplingOptions(presence_penalty=1.0).with_prompt(PROMPT).penalty_prompt_tokens == ()
