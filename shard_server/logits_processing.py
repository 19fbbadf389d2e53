"""Logits processors of one request on the last shard: mlx-lm's, applied where mlx-lm applies them.

mlx-lm's `generate_step` runs each of its `logits_processors` on the last position's logits, with the
tokens so far, before the log-softmax and the sampler. A request's processors here are mlx-lm's own
functions (`make_logits_processors`, `make_presence_penalty`, `make_frequency_penalty`), in mlx-lm's
order, so the processed logits are bitwise theirs:

1. logit bias (added to the chosen token ids);
2. repetition penalty, over the last `repetition_context_size` tokens, prompt included (mlx-lm's
   semantics: the first shard sends the prompt's tail, `SamplingOptions.penalty_prompt_tokens`);
3. presence and frequency penalty with OpenAI's semantics: over every token generated so far and
   none of the prompt (mlx-lm's processors given the generated tokens, with an unbounded window);
4. (a grammar mask, when a request has one, goes here: last, so it sees the penalized logits and
   masks what no penalty can bring back; `_grammar_processors` is its place.)

History: every token the request samples is recorded (`record`). A replayed request (recovery)
samples each replayed step again on the last shard, so its history is rebuilt from the prompt and
the replayed tokens, bitwise as before, and the penalties stay exact.
"""

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import make_frequency_penalty, make_logits_processors, make_presence_penalty

from services.kernel.sampling import SamplingOptions

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
"""mlx-lm's contract: (tokens so far, logits (1, vocab)) -> processed logits (1, vocab)."""

UNBOUNDED_WINDOW = 2**31 - 1
"""The window given to mlx-lm's presence/frequency processors: every generated token counts."""


class RequestLogitsProcessing:
    """The processors of one request and the token history they read; empty when it has none."""

    def __init__(self, options: SamplingOptions) -> None:
        self._prompt_tail = list(options.penalty_prompt_tokens)
        self._generated: list[int] = []
        # mlx-lm's processors that look at prompt + generated tokens (logit bias ignores them).
        self._over_all_tokens: list[LogitsProcessor] = make_logits_processors(
            logit_bias=dict(options.logit_bias) if options.logit_bias else None,
            repetition_penalty=options.repetition_penalty or None,
            repetition_context_size=options.repetition_context_size,
        )
        # OpenAI's penalties: mlx-lm's processors over the generated tokens alone.
        self._over_generated: list[LogitsProcessor] = []
        if options.presence_penalty:
            self._over_generated.append(make_presence_penalty(options.presence_penalty, UNBOUNDED_WINDOW))
        if options.frequency_penalty:
            self._over_generated.append(make_frequency_penalty(options.frequency_penalty, UNBOUNDED_WINDOW))
        self._grammar_processors: list[LogitsProcessor] = []
        """A grammar mask's place: applied last."""

    @property
    def active(self) -> bool:
        return bool(self._over_all_tokens or self._over_generated or self._grammar_processors)

    def apply(self, logits: mx.array) -> mx.array:
        """logits (1, vocab) of the position being sampled -> processed logits (1, vocab)."""
        if self._over_all_tokens:
            tokens = mx.array(self._prompt_tail + self._generated, dtype=mx.int32)
            for processor in self._over_all_tokens:
                logits = processor(tokens, logits)
        if self._over_generated:
            generated = mx.array(self._generated, dtype=mx.int32)
            for processor in self._over_generated:
                logits = processor(generated, logits)
        for processor in self._grammar_processors:
            logits = processor(mx.array(self._generated, dtype=mx.int32), logits)
        return logits

    def record(self, token_id: int) -> None:
        """The token sampled at this step: the next steps' processors count it."""
        if self.active:
            self._generated.append(token_id)
