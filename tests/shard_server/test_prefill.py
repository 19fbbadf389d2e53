"""prefill_chunks: the same prompt chunks as mlx-lm's generate_step, checked by driving generate_step itself."""

import importlib
import itertools
from collections.abc import Callable, Iterator
from typing import cast

import mlx.core as mx
import pytest

from shard_server.prefill import prefill_chunks

pytestmark = pytest.mark.unit

VOCAB = 8

# mlx_lm.generate has no stub here; its generate_step is reached through a typed door.
_generate_step = cast(
    Callable[..., Iterator[tuple[int, mx.array]]],
    importlib.import_module("mlx_lm.generate").generate_step,
)


class RecordingModel:
    """Stands in for a model: records the tokens of each forward call, returns flat logits."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def make_cache(self) -> list[object]:
        return []

    def __call__(self, inputs: mx.array, cache: object = None) -> mx.array:
        tokens = cast(list[list[int]], inputs.tolist())  # (1, positions)
        self.calls.append(tokens[0])
        return mx.zeros((1, inputs.shape[1], VOCAB))  # (1, positions, vocab)


def mlx_lm_chunks(prompt_length: int, step_size: int) -> list[tuple[int, int]]:
    """[start, end) of each forward call generate_step makes on the prompt, before any decode step."""
    model = RecordingModel()
    # max_tokens=0: the prompt is processed and its token sampled, with no decode step after it.
    for _ in _generate_step(mx.arange(prompt_length), model, max_tokens=0, prefill_step_size=step_size):
        pass
    chunks: list[tuple[int, int]] = []
    for tokens in model.calls:
        # Tokens are positions here (the prompt is arange), so each call names its own range.
        assert tokens == list(range(tokens[0], tokens[0] + len(tokens)))
        chunks.append((tokens[0], tokens[0] + len(tokens)))
    return chunks


@pytest.mark.parametrize("step_size", [1, 2, 4, 7])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_chunks_match_mlx_lm_generate_step_around_step_boundaries(step_size: int, offset: int) -> None:
    lengths = {1, 2, step_size, step_size + 1, 2 * step_size, 2 * step_size + 1, 3 * step_size + offset}
    for length in sorted(lengths):
        assert prefill_chunks(length, step_size) == mlx_lm_chunks(length, step_size), length


@pytest.mark.parametrize(
    ("prompt_length", "step_size", "expected"),
    [
        (1, 4, [(0, 1)]),
        (2, 4, [(0, 1), (1, 2)]),
        (4, 4, [(0, 3), (3, 4)]),
        (5, 4, [(0, 4), (4, 5)]),
        (9, 4, [(0, 4), (4, 8), (8, 9)]),
        (10, 4, [(0, 4), (4, 8), (8, 9), (9, 10)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
        (6, 100, [(0, 5), (5, 6)]),
    ],
)
def test_chunks_for_known_lengths(prompt_length: int, step_size: int, expected: list[tuple[int, int]]) -> None:
    assert prefill_chunks(prompt_length, step_size) == expected


@pytest.mark.parametrize("prompt_length", range(1, 40))
def test_chunks_cover_the_prompt_and_end_with_the_last_token_alone(prompt_length: int) -> None:
    step_size = 8
    chunks = prefill_chunks(prompt_length, step_size)

    assert chunks[0][0] == 0
    assert chunks[-1] == (prompt_length - 1, prompt_length)
    for (_, end), (start, _) in itertools.pairwise(chunks):
        assert end == start
    assert all(1 <= end - start <= step_size for start, end in chunks)


@pytest.mark.parametrize(("prompt_length", "step_size"), [(0, 4), (-1, 4), (5, 0), (5, -3)])
def test_bad_arguments_raise_value_error(prompt_length: int, step_size: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        prefill_chunks(prompt_length, step_size)
