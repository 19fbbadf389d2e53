"""OpenAI's logprobs shapes, built from the tokens' logprobs the engine attaches to its text deltas.

- chat (`logprobs: true`, `top_logprobs: 0-20`): `choices[].logprobs.content` is a list of
  `{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}`, one per token;
  streamed, each chunk carries the entries of the tokens of its delta.
- completions (`logprobs: 0-20`, the legacy shape): `{"tokens", "token_logprobs", "top_logprobs":
  [{token: logprob}], "text_offset"}`.

Values are the last shard's float32 logprobs (`x - logsumexp(x)` after the logits processors, as
mlx-lm's `generate_step` yields them), written as JSON numbers that read back to the same float.
"""

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from gateway.token_logprobs import AlternativeLogprob, TokenLogprob


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class ChatTopLogprob(_Reply):
    token: str
    logprob: float
    bytes: tuple[int, ...] | None


class ChatTokenLogprob(_Reply):
    token: str
    logprob: float
    bytes: tuple[int, ...] | None
    top_logprobs: tuple[ChatTopLogprob, ...]


class ChatChoiceLogprobs(_Reply):
    content: tuple[ChatTokenLogprob, ...]
    refusal: None = None


class CompletionChoiceLogprobs(_Reply):
    tokens: tuple[str, ...]
    token_logprobs: tuple[float, ...]
    top_logprobs: tuple[dict[str, float], ...]
    text_offset: tuple[int, ...]


def _chat_top(alternative: AlternativeLogprob) -> ChatTopLogprob:
    return ChatTopLogprob(token=alternative.token, logprob=alternative.logprob, bytes=alternative.bytes)


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> ChatChoiceLogprobs:
    return ChatChoiceLogprobs(
        content=tuple(
            ChatTokenLogprob(
                token=token.token,
                logprob=token.logprob,
                bytes=token.bytes,
                top_logprobs=tuple(_chat_top(alternative) for alternative in token.top_logprobs),
            )
            for token in tokens
        )
    )


def completion_logprobs(tokens: Sequence[TokenLogprob], text_start: int) -> CompletionChoiceLogprobs:
    """`text_start`: where the first token's text starts in the choice's whole text."""
    offsets: list[int] = []
    offset = text_start
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return CompletionChoiceLogprobs(
        tokens=tuple(token.token for token in tokens),
        token_logprobs=tuple(token.logprob for token in tokens),
        # Two alternatives decoding to the same text keep the better one (the first, best first).
        top_logprobs=tuple(
            {alternative.token: alternative.logprob for alternative in reversed(token.top_logprobs)} for token in tokens
        ),
        text_offset=tuple(offsets),
    )
