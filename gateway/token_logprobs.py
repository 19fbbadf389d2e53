"""Logprobs of generated tokens as the dialects report them: each token's text, bytes and value.

The last shard computes each sampled token's logprob (`x - logsumexp(x)` of the processed logits,
float32, as mlx-lm's `generate_step` yields it) and the best `top_logprobs`; the gateway only names
the tokens. A token's text is its own decoding (special tokens decode to "", a token holding part of
a multi-byte character to U+FFFD); `bytes` are the token's own bytes for byte-level BPE tokenizers
(the tokens' bytes joined are the text's UTF-8), else its text's UTF-8.
"""

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from gateway.token_source import GeneratedToken


class TokenNames(Protocol):
    """What naming a token takes (a `ModelTokenizer`)."""

    def decode(self, token_ids: list[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


class AlternativeLogprob(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    token_id: int
    token: str
    bytes: tuple[int, ...]
    logprob: float


class TokenLogprob(BaseModel):
    """One generated token's logprob and the best alternatives at its position, best first."""

    model_config = ConfigDict(frozen=True, strict=True)

    token_id: int
    token: str
    bytes: tuple[int, ...]
    logprob: float
    top_logprobs: tuple[AlternativeLogprob, ...] = ()


def token_logprob(token: GeneratedToken, names: TokenNames) -> TokenLogprob | None:
    """The token's logprob with its text; None when the shard sent none (the request asked for none)."""
    if token.logprob is None:
        return None
    alternatives = tuple(
        AlternativeLogprob(
            token_id=token_id,
            token=names.decode([token_id]),
            bytes=tuple(names.token_bytes(token_id)),
            logprob=logprob,
        )
        for token_id, logprob in token.top_logprobs
    )
    return TokenLogprob(
        token_id=token.token_id,
        token=names.decode([token.token_id]),
        bytes=tuple(names.token_bytes(token.token_id)),
        logprob=token.logprob,
        top_logprobs=alternatives,
    )
