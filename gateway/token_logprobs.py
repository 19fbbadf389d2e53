"""Logprobs of generated tokens as the dialects report them: each token's text, bytes and value.

The last shard computes each sampled token's logprob (`x - logsumexp(x)` of the processed logits,
float32, as mlx-lm's `generate_step` yields it) and the best `top_logprobs`; the gateway only names
the tokens. A token's text is its own decoding (special tokens decode to ""); `bytes` are that
text's UTF-8 bytes, so a token holding part of a multi-byte character reads as U+FFFD.
"""

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from gateway.token_source import GeneratedToken


class AlternativeLogprob(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    token_id: int
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """One generated token's logprob and the best alternatives at its position, best first."""

    model_config = ConfigDict(frozen=True, strict=True)

    token_id: int
    token: str
    logprob: float
    top_logprobs: tuple[AlternativeLogprob, ...] = ()


def token_logprob(token: GeneratedToken, decode: Callable[[Sequence[int]], str]) -> TokenLogprob | None:
    """The token's logprob with its text; None when the shard sent none (the request asked for none)."""
    if token.logprob is None:
        return None
    alternatives = tuple(
        AlternativeLogprob(token_id=token_id, token=decode([token_id]), logprob=logprob)
        for token_id, logprob in token.top_logprobs
    )
    return TokenLogprob(
        token_id=token.token_id, token=decode([token.token_id]), logprob=token.logprob, top_logprobs=alternatives
    )
