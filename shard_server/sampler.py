"""Token sampling on the last shard, with a random key per request.

mlx-lm samples from MLX's global random state after `mx.random.seed(seed)`; each draw splits that
key. Here every request keeps its own key and splits it the same way, so a seeded request draws the
same tokens as mlx-lm run alone, whatever other traffic the shard serves. The filters are mlx-lm's
own compiled functions, in `make_sampler`'s order (top_p, min_p, top_k); only the final draw takes
the key explicitly (checked bitwise equal). The request's logits processors
(`shard_server/logits_processing.py`) run first, where mlx-lm's `generate_step` runs them, and the
logprobs reported to the client are that step's `x - logsumexp(x)`, as `generate_step` yields them.

Greedy rows of a batch share one reduction (`sample_rows`): mlx-lm takes the argmax of the logprobs
`x - logsumexp(x)`, and subtracting one number is monotonic, so that is the argmax of `x` itself
unless the rounding of the subtraction merges the top value with a runner-up. `clear_greedy_tokens`
proves, per row, that it cannot (the gap between the two largest values exceeds the rounding error
the subtraction can make), and leaves the rows it cannot prove to the full computation. Same token,
without an `exp` over the whole vocabulary per row. Rows with logits processors or that report
logprobs always take the full computation.

A request with a grammar (`shard_server/grammar_mask.py`) has its logits masked after the other
processors (for the fast path too: masking is idempotent and commutes with them, as masked logits
stay -inf), and its matcher advances with each token the request takes (`took`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from services.kernel.sampling import SamplingOptions
from services.platform.mlx_typing import evaluate, scalar_int, to_bool_list, to_float_list, to_int_list
from shard_server.grammar_mask import GrammarMatcher, mask_rows
from shard_server.logits_processing import RequestLogitsProcessing


@partial(mx.compile)
def _categorical_with_key(logits: mx.array, inverse_temperature: float, key: mx.array) -> mx.array:
    return mx.random.categorical(logits * inverse_temperature, key=key)


@dataclass(frozen=True)
class SampledChoice:
    """A sampled token and, when the request asked, its logprob and the best `top_logprobs`."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """(token id, logprob), best first (ties: lower token id first)."""


class RequestSampler:
    """Turns the last position's logits into a token; owns the request's random key and processors."""

    def __init__(self, options: SamplingOptions, grammar: GrammarMatcher | None = None) -> None:
        self.options = options
        self.grammar = grammar
        self.key_position = options.key_position
        self._key = mx.random.key(options.seed)
        for _ in range(options.key_position):
            self._key, _ = mx.random.split(self._key)
        self._processing = RequestLogitsProcessing(options)

    @property
    def greedy(self) -> bool:
        return self.options.temperature == 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing but the argmax to compute: the batched fast path applies."""
        return self.greedy and not self._processing.active and not self.options.logprobs

    def sample(self, logits: mx.array) -> int:
        """logits: (1, positions, vocab); samples from the last position as mlx-lm's generate_step."""
        return self.sample_choice(logits).token_id

    def sample_choice(self, logits: mx.array) -> SampledChoice:
        """As `sample`, with the logprobs the request asked for."""
        last = logits[:, -1, :]  # (1, vocab)
        if self._processing.active:
            last = self._processing.apply(last)
        if self.grammar is not None:
            last = self.grammar.mask(last)  # the last logits processor, before the logsumexp
        logprobs = last - mx.logsumexp(last, keepdims=True)  # (1, vocab)
        if self.greedy:
            token = scalar_int(mx.argmax(logprobs, axis=-1))
        else:
            filtered = logprobs
            if 0 < self.options.top_p < 1.0:
                filtered = apply_top_p(filtered, self.options.top_p)
            if self.options.min_p != 0.0:
                filtered = apply_min_p(filtered, self.options.min_p)
            if self.options.top_k > 0:
                filtered = apply_top_k(filtered, self.options.top_k)
            self._key, draw_key = mx.random.split(self._key)
            self.key_position += 1
            token = scalar_int(_categorical_with_key(filtered, 1.0 / self.options.temperature, draw_key))
        self.took(token)
        if not self.options.logprobs:
            return SampledChoice(token)
        return _with_logprobs(token, logprobs[0], self.options.top_logprobs)

    def took(self, token: int) -> int:
        """The request's token for this step (however it was picked): its processors' history and its
        grammar advance with it."""
        self._processing.record(token)
        if self.grammar is not None:
            self.grammar.advance(token)
        return token


def _with_logprobs(token: int, logprobs: mx.array, top: int) -> SampledChoice:
    """logprobs (vocab,): the token's value and the `top` best, sorted, from that same array."""
    chosen = logprobs[token]
    if top == 0:
        evaluate(chosen)
        return SampledChoice(token, to_float_list(chosen[None])[0])
    candidates = mx.argpartition(-logprobs, kth=top - 1)[:top]  # (top,), unordered
    values = logprobs[candidates]
    evaluate(chosen, candidates, values)
    best = sorted(
        zip(to_int_list(candidates), to_float_list(values), strict=True), key=lambda item: (-item[1], item[0])
    )
    return SampledChoice(token, to_float_list(chosen[None])[0], tuple(best))


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


def sample_rows(samplers: Sequence[RequestSampler], logits: mx.array) -> list[SampledChoice]:
    """logits (1, rows, vocab), one row per sampler: each row's token, as its sampler alone would draw it."""
    logits = mask_rows(logits, [sampler.grammar for sampler in samplers])
    greedy_rows = [row for row, sampler in enumerate(samplers) if sampler.plain_greedy]
    picked: dict[int, int | None] = {}
    if greedy_rows:
        rows = logits[0] if len(greedy_rows) == len(samplers) else logits[0, mx.array(greedy_rows)]
        cleared = clear_greedy_tokens(rows)
        picked = dict(zip(greedy_rows, cleared, strict=True))
    choices: list[SampledChoice] = []
    for row, sampler in enumerate(samplers):
        token = picked.get(row)
        choices.append(
            SampledChoice(sampler.took(token)) if token is not None else sampler.sample_choice(logits[:, row : row + 1])
        )
    return choices
