"""Structured output on the last shard: each request's grammar masks its logits, step by step.

A request whose `SamplingOptions.grammar` is set gets a `GrammarMatcher` (llguidance's `LLMatcher`
over the model's own tokenizer). Before every sample its mask sets the logits of the tokens the
grammar does not allow to -inf: one more logits processor, right before the logsumexp, so greedy
and seeded sampling pick among allowed tokens exactly as they would pick among all. The matcher then
consumes the step's token. The gateway's grammars end with one of the request's stop tokens
(`gateway/output_grammar.py`), so once the text is complete the mask leaves only those, and the
request ends with "stop". A matcher that is stopped, or in an error state (which tokens its own mask
allowed cannot cause; it says why in the log), allows only the tokenizer's EOS.

A recovering request (`replay_tokens`) consumes the journal's tokens in place of the ones sampled at
those steps, as the first shard feeds them: the matcher follows the text the client already has.

The tokenizer (`GrammarVocabulary`) is built once per loaded stage, on the first grammar request
(about 0.35 s for a 49152-token vocabulary), from the model directory's tokenizer.json.
"""

import logging
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import llguidance
import mlx.core as mx
import numpy as np
from numpy.typing import NDArray

from services.models.model_config import ModelConfig

logger = logging.getLogger(__name__)

_bool_array = cast(Callable[[NDArray[np.bool_]], mx.array], mx.array)
"""mx.array from a numpy array (its stub leaves numpy out of the accepted types)."""


class GrammarError(Exception):
    """A request's grammar cannot be used here (refused by llguidance, or the model has no tokenizer.json)."""


class GrammarVocabulary:
    """The model's tokenizer as llguidance needs it, built on first use. Owned by the stage worker thread."""

    def __init__(self, model_dir: Path, config: ModelConfig) -> None:
        self._tokenizer_file = model_dir / "tokenizer.json"
        self.vocab_size = config.vocab_size
        """Width of the logits (may exceed the tokenizer's own vocabulary: padding rows are never allowed)."""
        self._eos_token_ids = list(config.eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            try:
                text = self._tokenizer_file.read_text(encoding="utf-8")
            except OSError as error:
                raise GrammarError(
                    f"grammars need the model's tokenizer.json, which is not readable here: {error}"
                ) from error
            try:
                self._tokenizer = llguidance.LLTokenizer(
                    text, n_vocab=self.vocab_size, eos_token=self._eos_token_ids or None
                )
            except ValueError as error:
                raise GrammarError(f"llguidance cannot use this model's tokenizer: {error}") from error
        return self._tokenizer


class GrammarMatcher:
    """One request's grammar state on the last shard: the mask of its next step, advanced token by token."""

    def __init__(self, vocabulary: GrammarVocabulary, grammar: str, replay_tokens: Sequence[int] = ()) -> None:
        self._matcher = llguidance.LLMatcher(vocabulary.tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar was refused: {self._matcher.get_error()}")
        self._vocab_size = vocabulary.vocab_size
        self._bitmask = np.zeros((vocabulary.vocab_size + 31) // 32, dtype=np.int32)
        self._allowed: mx.array | None = None
        """The mask of the current state, (vocab,) bool; None once a token was consumed since."""
        self._replay = deque(replay_tokens)
        self._error_logged = False

    def allowed(self) -> mx.array:
        """(vocab,) bool: the tokens the grammar allows next (only EOS when it is complete or broken)."""
        if self._allowed is None:
            self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
            # Bit i of word w is token 32 w + i (little-endian words, so little-endian bytes too).
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[: self._vocab_size]
            self._allowed = _bool_array(bits.astype(np.bool_))  # (vocab,)
        return self._allowed

    def mask(self, logits: mx.array) -> mx.array:
        """logits (..., vocab): disallowed tokens set to -inf (masking twice changes nothing)."""
        return mx.where(self.allowed(), logits, mx.array(-mx.inf, dtype=logits.dtype))

    def advance(self, sampled: int) -> None:
        """The step's token (the journal's while replaying) moves the grammar on."""
        token = self._replay.popleft() if self._replay else sampled
        self._allowed = None
        if not self._matcher.consume_token(token) and not self._error_logged:
            self._error_logged = True
            logger.warning(
                "grammar matcher failed on token %d; only EOS is allowed now: %s", token, self._matcher.get_error()
            )


def grammar_matcher(
    grammar: str | None, vocabulary: GrammarVocabulary | None, replay_tokens: Sequence[int] = ()
) -> GrammarMatcher | None:
    """The request's matcher, None without a grammar; raises `GrammarError` when it cannot be built."""
    if grammar is None:
        return None
    if vocabulary is None:
        raise GrammarError("this shard does not sample (it is not the last of its ring)")
    return GrammarMatcher(vocabulary, grammar, replay_tokens)


def mask_rows(logits: mx.array, matchers: Sequence[GrammarMatcher | None]) -> mx.array:
    """logits (1, rows, vocab), one row per request: each row masked by its grammar (rows without one as they are)."""
    if all(matcher is None for matcher in matchers):
        return logits
    everything = mx.ones((logits.shape[-1],), dtype=mx.bool_)
    allowed = mx.stack(
        [matcher.allowed() if matcher is not None else everything for matcher in matchers]
    )  # (rows, vocab)
    return mx.where(allowed[None], logits, mx.array(-mx.inf, dtype=logits.dtype))
