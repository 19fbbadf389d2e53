"""RequestSampler: the tokens mlx-lm's own sampler draws after mx.random.seed(seed), from a per-request key."""

import random

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import make_sampler

from services.kernel.sampling import SamplingOptions
from services.platform.mlx_typing import scalar_int
from shard_server.sampler import RequestSampler, clear_greedy_tokens, sample_rows

pytestmark = pytest.mark.unit

VOCAB = 64
STEPS = 24
SEEDS = [0, 1, 7, 12345]
SETTINGS = {
    "greedy": SamplingOptions(temperature=0.0),
    "temperature 0.7, top_p 0.9": SamplingOptions(temperature=0.7, top_p=0.9),
    "temperature 1.0": SamplingOptions(temperature=1.0),
    "temperature 0.8, top_k 5": SamplingOptions(temperature=0.8, top_k=5),
    "temperature 1.2, top_p 0.5, top_k 10": SamplingOptions(temperature=1.2, top_p=0.5, top_k=10),
}


def random_logits(seed: int, steps: int = STEPS) -> list[mx.array]:
    """Model outputs of shape (1, positions, vocab); some steps carry more than one position."""
    key = mx.random.key(10_000 + seed)
    logits: list[mx.array] = []
    for step in range(steps):
        key, draw = mx.random.split(key)
        positions = 1 + step % 3
        logits.append(3.0 * mx.random.normal((1, positions, VOCAB), key=draw))
    return logits


def mlx_lm_tokens(options: SamplingOptions, logits: list[mx.array]) -> list[int]:
    """What mlx-lm's generate_step draws: global seed, then its sampler on the last position's logprobs."""
    mx.random.seed(options.seed)
    sampler = make_sampler(options.temperature, options.top_p, top_k=options.top_k)
    tokens: list[int] = []
    for step_logits in logits:
        last = step_logits[:, -1, :]  # (1, vocab)
        logprobs = last - mx.logsumexp(last, keepdims=True)
        tokens.append(scalar_int(sampler(logprobs)))
    return tokens


def request_tokens(sampler: RequestSampler, logits: list[mx.array]) -> list[int]:
    return [sampler.sample(step_logits) for step_logits in logits]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SETTINGS)
def test_draws_the_same_tokens_as_mlx_lm(name: str, seed: int) -> None:
    options = SETTINGS[name].model_copy(update={"seed": seed})
    logits = random_logits(seed)

    expected = mlx_lm_tokens(options, logits)
    actual = request_tokens(RequestSampler(options), logits)

    assert actual == expected


def test_sampled_settings_are_not_trivially_greedy() -> None:
    # Guards the comparison above: with these logits a sampled run differs from argmax somewhere.
    logits = random_logits(0)
    greedy = request_tokens(RequestSampler(SETTINGS["greedy"]), logits)

    assert request_tokens(RequestSampler(SETTINGS["temperature 1.0"]), logits) != greedy


def test_different_seeds_draw_different_tokens() -> None:
    logits = random_logits(0)
    options = SETTINGS["temperature 1.0"]

    first = request_tokens(RequestSampler(options.model_copy(update={"seed": 1})), logits)
    second = request_tokens(RequestSampler(options.model_copy(update={"seed": 2})), logits)

    assert first != second


def test_global_random_state_does_not_change_a_requests_samples() -> None:
    options = SamplingOptions(temperature=1.0, seed=3)
    logits = random_logits(3)
    solo = request_tokens(RequestSampler(options), logits)

    sampler = RequestSampler(options)
    disturbed: list[int] = []
    for step_logits in logits:
        mx.random.seed(999)  # other code reseeding and drawing from the global state
        mx.random.uniform(shape=(4,))
        disturbed.append(sampler.sample(step_logits))

    assert disturbed == solo


@pytest.mark.parametrize("name", ["temperature 0.7, top_p 0.9", "temperature 0.8, top_k 5"])
def test_interleaved_requests_each_reproduce_their_solo_tokens(name: str) -> None:
    # Two requests share a shard; each one's samples must not depend on the other's traffic.
    first_options = SETTINGS[name].model_copy(update={"seed": 11})
    second_options = SETTINGS[name].model_copy(update={"seed": 22})
    first_logits, second_logits = random_logits(1), random_logits(2)
    first_solo = request_tokens(RequestSampler(first_options), first_logits)
    second_solo = request_tokens(RequestSampler(second_options), second_logits)

    first, second = RequestSampler(first_options), RequestSampler(second_options)
    first_tokens: list[int] = []
    second_tokens: list[int] = []
    # Uneven interleaving (seeded): either request may run several steps in a row.
    order = random.Random(5).sample([1] * STEPS + [2] * STEPS, 2 * STEPS)
    for which in order:
        if which == 1:
            first_tokens.append(first.sample(first_logits[len(first_tokens)]))
        else:
            second_tokens.append(second.sample(second_logits[len(second_tokens)]))

    assert first_tokens == first_solo
    assert second_tokens == second_solo
    assert first_tokens == mlx_lm_tokens(first_options, first_logits)


@pytest.mark.parametrize("key_position", [0, 1, 5, 13])
def test_key_position_resumes_where_a_fresh_sampler_would_be(key_position: int) -> None:
    options = SamplingOptions(temperature=0.9, top_p=0.95, seed=42)
    logits = random_logits(42)
    fresh = RequestSampler(options)
    for step_logits in logits[:key_position]:
        fresh.sample(step_logits)

    resumed = RequestSampler(options.model_copy(update={"key_position": key_position}))

    assert resumed.key_position == fresh.key_position == key_position
    rest = logits[key_position:]
    assert request_tokens(resumed, rest) == request_tokens(fresh, rest)
    assert resumed.key_position == len(logits)


def test_key_position_counts_draws_and_greedy_draws_none() -> None:
    logits = random_logits(5, steps=4)
    sampled = RequestSampler(SamplingOptions(temperature=1.0))
    greedy = RequestSampler(SamplingOptions(temperature=0.0))

    request_tokens(sampled, logits)
    request_tokens(greedy, logits)

    assert sampled.key_position == 4
    assert greedy.key_position == 0


def test_greedy_takes_the_argmax_of_the_last_position() -> None:
    logits = mx.zeros((1, 3, VOCAB))
    logits[0, 0, 5] = 10.0  # an earlier position must be ignored
    logits[0, 2, 9] = 10.0

    assert RequestSampler(SamplingOptions()).sample(logits) == 9


def test_top_k_one_always_takes_the_most_likely_token() -> None:
    sampler = RequestSampler(SamplingOptions(temperature=5.0, top_k=1, seed=8))
    for step_logits in random_logits(8):
        expected = scalar_int(mx.argmax(step_logits[:, -1, :], axis=-1))
        assert sampler.sample(step_logits) == expected


def mlx_lm_greedy(row: mx.array) -> int:
    """mlx-lm's greedy token for one row of logits (vocab,): the argmax of its logprobs."""
    return scalar_int(mx.argmax(row - mx.logsumexp(row, keepdims=True), axis=-1))


def near_tie_row(vocab: int = 64) -> mx.array:
    """Logits whose plain argmax is not mlx-lm's: the top value is one float above another, both far
    below logsumexp's scale, so the subtraction rounds them to the same logprob and mlx-lm's argmax
    takes the first of the two."""
    base = 1e-3
    values = [base] * vocab
    values[1] = float(mx.array(base) + mx.array(1e-10))  # the next float32 above 1e-3
    return mx.array(values)


def test_the_near_tie_row_is_a_real_trap() -> None:
    row = near_tie_row()

    assert scalar_int(mx.argmax(row)) == 1
    assert mlx_lm_greedy(row) == 0


def test_clear_greedy_leaves_near_ties_and_non_finite_rows_to_the_full_computation() -> None:
    clear = 3.0 * mx.random.normal((64,), key=mx.random.key(4))
    infinite = mx.zeros((64,))
    infinite[7] = float("inf")
    missing = mx.zeros((64,))
    missing[3] = float("nan")
    logits = mx.stack([clear, near_tie_row(), infinite, missing])

    tokens = clear_greedy_tokens(logits)

    assert tokens == [mlx_lm_greedy(clear), None, None, None]


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_clear_greedy_tokens_are_mlx_lms_on_random_and_tied_rows(dtype: mx.Dtype) -> None:
    key = mx.random.key(21)
    rows: list[mx.array] = []
    for scale in (0.01, 1.0, 8.0, 30.0):
        key, draw = mx.random.split(key)
        rows.append(scale * mx.random.normal((16, 4096), key=draw))
    logits = mx.concatenate(rows).astype(dtype)
    tied = mx.zeros((4096,), dtype=dtype)
    tied[100] = 5.0
    tied[3000] = 5.0  # the same top value twice: both argmaxes take the first
    logits = mx.concatenate([logits, tied[None]])

    tokens = clear_greedy_tokens(logits)

    if dtype == mx.float32:  # half dtypes round coarsely: more rows go to the full computation
        assert sum(token is not None for token in tokens) >= len(tokens) - 2  # proven for nearly every row
    for row, token in enumerate(tokens):
        if token is not None:
            assert token == mlx_lm_greedy(logits[row])
    assert tokens[-1] == 100


def test_sample_rows_draws_what_each_request_draws_alone() -> None:
    options = [
        SETTINGS["greedy"],
        SETTINGS["temperature 0.7, top_p 0.9"].model_copy(update={"seed": 3}),
        SETTINGS["greedy"],
        SETTINGS["temperature 1.0"].model_copy(update={"seed": 4}),
        SETTINGS["greedy"],
    ]
    batched = [RequestSampler(option) for option in options]
    alone = [RequestSampler(option) for option in options]
    for step_logits in random_logits(6):
        step = mx.concatenate([step_logits[:, -1:, :]] * (len(options) - 1) + [near_tie_row()[None, None]], axis=1)
        expected = [sampler.sample(step[:, row : row + 1]) for row, sampler in enumerate(alone)]

        assert [choice.token_id for choice in sample_rows(batched, step)] == expected
    assert [sampler.key_position for sampler in batched] == [sampler.key_position for sampler in alone]


def test_sample_rows_with_only_greedy_rows_matches_mlx_lm() -> None:
    samplers = [RequestSampler(SamplingOptions()) for _ in range(3)]
    for step_logits in random_logits(9):
        step = mx.concatenate([step_logits[:, -1:, :], near_tie_row()[None, None], -step_logits[:, -1:, :]], axis=1)

        assert [choice.token_id for choice in sample_rows(samplers, step)] == [
            mlx_lm_greedy(step[0, row]) for row in range(3)
        ]
