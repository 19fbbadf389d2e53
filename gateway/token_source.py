"""The contract between the HTTP dialects and the data plane: token ids in, token ids out.

Every API dialect (OpenAI today; Anthropic, Ollama, Responses later) turns its request into a
`TokenRequest` after tokenizing, and reads `TokenEvent`s back. `TokenSource` is implemented by the
pipeline client that streams from the first shard of a ready model instance.
"""

from collections.abc import AsyncIterator
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import SamplingOptions


class TokenRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    request_id: RequestId
    model_id: ModelId
    prompt_tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingOptions
    stop_token_ids: tuple[int, ...]


class GeneratedToken(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["token"] = "token"
    token_id: int
    logprob: float | None = None
    """When the request asked for logprobs: the token's, as the last shard computed it."""
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """(token id, logprob) of the best tokens at this position, best first."""
    embedding: bytes = b""
    """When the request asked (`return_embedding`): the final norm's output here, raw float32."""


class GenerationFinished(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["finished"] = "finished"
    reason: Literal["stop", "length"]
    prompt_tokens: int
    generated_tokens: int


TokenEvent = GeneratedToken | GenerationFinished


class ModelUnavailableError(Exception):
    """No ready instance of the model can serve right now (HTTP 503)."""


class PipelineError(Exception):
    """The shard pipeline failed while running a request.

    `retryable`: whether running the request again (replaying its journal) may succeed; false when
    the shards refused the request itself (invalid, or overloaded before it started).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class OverloadedError(PipelineError):
    """The instance refused the request at its admission limit (KV budget, wait queue): HTTP 503,
    with `retry_after_seconds` from the shard's hint. Not retried here: the client retries later."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, retryable=False)
        self.retry_after_seconds = retry_after_seconds


class RecoveryFailedError(PipelineError):
    """The pipeline broke and recovery gave up (attempts or deadline spent); the message says why,
    in words fit for the client (no addresses: the failures are logged)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ModelUnservedError(PipelineError):
    """The model was unserved while the request ran (`strata models unserve`): not replayed, nothing
    serves it any more. HTTP 404, or the stream's final error event."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class TokenSource(Protocol):
    def generate(self, request: TokenRequest) -> AsyncIterator[TokenEvent]:
        """Streams the generated tokens, then one `GenerationFinished`.

        Raises `ModelUnavailableError` before the first event when no instance is ready, and
        `PipelineError` when the pipeline breaks. Closing the iterator cancels the request.
        """
        ...
