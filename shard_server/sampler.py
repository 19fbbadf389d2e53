"""Token sampling on the last shard, with a random key per request.

mlx-lm samples from MLX's global random state after `mx.random.seed(seed)`; each draw splits that
key. Here every request keeps its own key and splits it the same way, so a seeded request draws the
same tokens as mlx-lm run alone, whatever other traffic the shard serves. The filters are mlx-lm's
own compiled functions; only the final draw takes the key explicitly (checked bitwise equal).

Greedy rows of a batch share one reduction (`sample_rows`): mlx-lm takes the argmax of the logprobs
`x - logsumexp(x)`, and subtracting one number is monotonic, so that is the argmax of `x` itself
unless the rounding of the subtraction merges the top value with a runner-up. `clear_greedy_tokens`
proves, per row, that it cannot (the gap between the two largest values exceeds the rounding error
the subtraction can make), and leaves the rows it cannot prove to the full computation. Same token,
without an `exp` over the whole vocabulary per row.

A request with a grammar (`shard_server/grammar_mask.py`) has its logits masked first, for the fast
path too, and its matcher advances with each token the request takes (`took`).
"""

import math
from collections.abc import Sequence
from functools import partial

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from services.kernel.sampling import SamplingOptions
from services.platform.mlx_typing import evaluate, scalar_int, to_bool_list, to_int_list
from shard_server.grammar_mask import GrammarMatcher, mask_rows


@partial(mx.compile)
def _categorical_with_key(logits: mx.array, inverse_temperature: float, key: mx.array) -> mx.array:
    return mx.random.categorical(logits * inverse_temperature, key=key)


class RequestSampler:
    """Turns the last position's logits into a token; owns the request's random key."""

    def __init__(self, options: SamplingOptions, grammar: GrammarMatcher | None = None) -> None:
        self.options = options
        self.grammar = grammar
        self.key_position = options.key_position
        self._key = mx.random.key(options.seed)
        for _ in range(options.key_position):
            self._key, _ = mx.random.split(self._key)

    @property
    def greedy(self) -> bool:
        return self.options.temperature == 0

    def sample(self, logits: mx.array) -> int:
        """logits: (1, positions, vocab); samples from the last position as mlx-lm's generate_step."""
        last = logits[:, -1, :]  # (1, vocab)
        if self.grammar is not None:
            last = self.grammar.mask(last)  # one more logits processor, before the logsumexp
        logprobs = last - mx.logsumexp(last, keepdims=True)
        if self.greedy:
            return self.took(scalar_int(mx.argmax(logprobs, axis=-1)))
        if 0 < self.options.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.options.top_p)
        if self.options.top_k > 0:
            logprobs = apply_top_k(logprobs, self.options.top_k)
        self._key, draw_key = mx.random.split(self._key)
        self.key_position += 1
        token = _categorical_with_key(logprobs, 1.0 / self.options.temperature, draw_key)
        return self.took(scalar_int(token))

    def took(self, token: int) -> int:
        """The request's token for this step (however it was picked): its grammar advances with it."""
        if self.grammar is not None:
            self.grammar.advance(token)
        return token


def clear_greedy_tokens(logits: mx.array) -> list[int | None]:
    """logits (rows, vocab): per row, the argmax of its logprobs where that is provably its plain argmax.

    With c = logsumexp(x) (max(x) <= c <= max(x) + log(vocab) + 1 in any rounding), x_i - c rounds
    with an error of at most u * (|x_i| + |c|), u the unit roundoff. If the top value beats every
    other by more than twice the worst such error, no rounding can tie or reverse them, and every
    position holding the top value stays the maximum: both argmaxes pick the same first one. The
    bound below has 4x slack over that, for the rounding of its own arithmetic. None: not proven
    (a near tie, or a non-finite top value); the caller computes those rows in full.
    """
    top = mx.max(logits, axis=-1, keepdims=True)
    runner_up = mx.max(mx.where(logits == top, -mx.inf, logits), axis=-1)
    top = top.squeeze(-1)
    log_vocab = math.log(logits.shape[-1]) + 1.0
    unit_roundoff = mx.finfo(logits.dtype).eps / 2
    bound = (4.0 * mx.abs(top) + 2.0 * log_vocab) * (4.0 * unit_roundoff)
    clear = mx.logical_and(mx.isfinite(top), (top - runner_up) > bound)
    tokens = mx.argmax(logits, axis=-1)
    evaluate(tokens, clear)
    return [token if proven else None for token, proven in zip(to_int_list(tokens), to_bool_list(clear), strict=True)]


def sample_rows(samplers: Sequence[RequestSampler], logits: mx.array) -> list[int]:
    """logits (1, rows, vocab), one row per sampler: each row's token, as its sampler alone would draw it."""
    logits = mask_rows(logits, [sampler.grammar for sampler in samplers])
    greedy_rows = [row for row, sampler in enumerate(samplers) if sampler.greedy]
    picked: dict[int, int | None] = {}
    if greedy_rows:
        rows = logits[0] if len(greedy_rows) == len(samplers) else logits[0, mx.array(greedy_rows)]
        cleared = clear_greedy_tokens(rows)
        picked = dict(zip(greedy_rows, cleared, strict=True))
    tokens: list[int] = []
    for row, sampler in enumerate(samplers):
        token = picked.get(row)
        tokens.append(sampler.took(token) if token is not None else sampler.sample(logits[:, row : row + 1]))
    return tokens
