"""In-memory stand-ins for the data plane, to test the gateway's pure logic under a timeout.

`ScriptedTokenSource` plays a model that answers every request with the same text (encoded with
the real test tokenizer) followed by EOS, honours `max_tokens` and the stop ids like a shard would,
and records what it was asked and which requests were closed before they finished (cancelled).
"""

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from gateway.generation_request import ModelNotFoundError
from gateway.token_source import (
    GeneratedToken,
    GenerationFinished,
    ModelUnavailableError,
    PipelineError,
    TokenEvent,
    TokenRequest,
)
from gateway.tokenization import ModelTokenizer
from services.kernel.ids import ModelId, RequestId

MODEL = ModelId("tiny-chat")


@dataclass
class ScriptedTokenSource:
    reply_tokens: list[int]
    """What the "model" generates for any prompt (EOS is appended by `generate`)."""
    eos_token_id: int
    unavailable: bool = False
    fail_after_tokens: int | None = None
    token_delay_seconds: float = 0.0
    requests: list[TokenRequest] = field(default_factory=list[TokenRequest])
    cancelled: list[RequestId] = field(default_factory=list[RequestId])
    completed: list[RequestId] = field(default_factory=list[RequestId])

    async def generate(self, request: TokenRequest) -> AsyncGenerator[TokenEvent]:
        if self.unavailable:
            raise ModelUnavailableError("no instance of tiny-chat is ready")
        self.requests.append(request)
        finished = False
        try:
            script = [*self.reply_tokens, self.eos_token_id]
            for position, token_id in enumerate(script):
                if position == request.max_tokens:
                    finished = True  # the finish event is sent: closing after it cancels nothing
                    yield self._finish(request, "length", position)
                    break
                if self.fail_after_tokens is not None and position == self.fail_after_tokens:
                    raise PipelineError("shard 2 at 10.0.0.2:52417 went away")
                if self.token_delay_seconds:
                    await asyncio.sleep(self.token_delay_seconds)
                yield GeneratedToken(token_id=token_id)
                if token_id in request.stop_token_ids:
                    finished = True
                    yield self._finish(request, "stop", position + 1)
                    break
        finally:
            (self.completed if finished else self.cancelled).append(request.request_id)

    @staticmethod
    def _finish(request: TokenRequest, reason: str, generated: int) -> GenerationFinished:
        return GenerationFinished(
            reason="stop" if reason == "stop" else "length",
            prompt_tokens=len(request.prompt_tokens),
            generated_tokens=generated,
        )


@dataclass
class StaticTokenizers:
    tokenizers: dict[ModelId, ModelTokenizer]

    def tokenizer_for(self, model_id: ModelId) -> ModelTokenizer:
        tokenizer = self.tokenizers.get(model_id)
        if tokenizer is None:
            raise ModelNotFoundError(model_id)
        return tokenizer


@dataclass
class StaticCatalog:
    models: Sequence[ModelId]
    ready: set[ModelId] = field(default_factory=set[ModelId])

    def served_models(self) -> Sequence[ModelId]:
        return self.models

    def is_ready(self, model_id: ModelId) -> bool:
        return model_id in self.ready


REPLY_TEXT = "Hello world! 日本語 😀🎉 The quick brown fox."
"""What the scripted model answers to every prompt."""


def scripted_source(
    tokenizer: ModelTokenizer,
    *,
    unavailable: bool = False,
    fail_after_tokens: int | None = None,
    token_delay_seconds: float = 0.0,
) -> ScriptedTokenSource:
    """A `ScriptedTokenSource` answering `REPLY_TEXT`, then the tokenizer's EOS (`<|im_end|>`)."""
    return ScriptedTokenSource(
        reply_tokens=tokenizer.encode_text(REPLY_TEXT),
        eos_token_id=tokenizer.stop_token_ids[-1],
        unavailable=unavailable,
        fail_after_tokens=fail_after_tokens,
        token_delay_seconds=token_delay_seconds,
    )
