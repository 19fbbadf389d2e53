"""`POST /v1/embeddings`: a pooled hidden state of the served model, through the same shards.

What an embedding is here: the final norm's output (what the LM head reads) at the **last** token of
the input, L2-normalized. Last-token pooling is what decoder embedding models use (Qwen3-Embedding,
e5-mistral); on a chat model it is a usable sentence vector, not a trained embedding model's. Each
input runs as a one-token generation whose last shard also returns that hidden state
(`return_embedding`), so inputs of one request, and of concurrent requests, share the shards'
batches; the vector is bit for bit the model's float32 state (normalized here, in float64, then
rounded once to float32). `encoding_format` "float" (JSON numbers, exact float32 values) or
"base64" (the float32 little-endian bytes, as OpenAI's client decodes them). `dimensions` is refused
unless it equals the model's hidden size (strata does not truncate vectors).
"""

import asyncio
import base64
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gateway.completion_engine import TokenizerProvider, close_token_stream
from gateway.generation_request import InvalidRequestError
from gateway.token_source import GeneratedToken, PipelineError, TokenRequest, TokenSource
from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import SamplingOptions

MAX_INPUTS = 256
"""Inputs per request (OpenAI allows 2048; each input is one generation on the shards)."""


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingData(BaseModel):
    model_config = ConfigDict(frozen=True)

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    model_config = ConfigDict(frozen=True)

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def normalized(vector: bytes) -> bytes:
    """Pure: a float32 vector (raw little-endian bytes) scaled to unit length, computed in float64 and
    rounded once to float32; a zero vector stays zero."""
    values = np.frombuffer(vector, dtype="<f4").astype(np.float64)
    norm = math.sqrt(float(np.dot(values, values)))
    scaled = values / norm if norm > 0 else values
    return scaled.astype("<f4").tobytes()


def encode_vector(vector: bytes, encoding_format: Literal["float", "base64"]) -> list[float] | str:
    """float32 bytes as OpenAI sends them: JSON numbers (each float32 exactly) or base64 of the bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    return [float(value) for value in np.frombuffer(vector, dtype="<f4")]


def _inputs_of(request: EmbeddingRequest) -> list[str | list[int]]:
    """The inputs one by one: a text, several texts, one token list, or several token lists."""
    given = request.input
    if isinstance(given, str):
        inputs: list[str | list[int]] = [given]
    elif given and all(isinstance(item, int) for item in given):
        inputs = [[item for item in given if isinstance(item, int)]]
    else:
        inputs = [item for item in given if not isinstance(item, int)]
    if not inputs:
        raise InvalidRequestError("input must not be empty", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequestError(f"at most {MAX_INPUTS} inputs per request; got {len(inputs)}", param="input")
    return inputs


class EmbeddingEngine:
    """Runs every input of a request as a one-token generation that returns its hidden state."""

    def __init__(self, token_source: TokenSource, tokenizers: TokenizerProvider) -> None:
        self._token_source = token_source
        self._tokenizers = tokenizers

    async def embed(self, request: EmbeddingRequest, request_id: RequestId) -> EmbeddingList:
        inputs = _inputs_of(request)
        model_id = ModelId(request.model)
        token_lists = await asyncio.to_thread(self._tokenize, model_id, inputs)
        vectors = await asyncio.gather(
            *(
                self._embed_one(model_id, RequestId(f"{request_id}-{index}"), tokens)
                for index, tokens in enumerate(token_lists)
            )
        )
        hidden_size = len(vectors[0]) // 4
        if request.dimensions is not None and request.dimensions != hidden_size:
            raise InvalidRequestError(
                f"dimensions must be the model's hidden size ({hidden_size}): strata does not truncate embeddings",
                param="dimensions",
            )
        data = [
            EmbeddingData(index=index, embedding=encode_vector(normalized(vector), request.encoding_format))
            for index, vector in enumerate(vectors)
        ]
        prompt_tokens = sum(len(tokens) for tokens in token_lists)
        return EmbeddingList(
            data=data,
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    def _tokenize(self, model_id: ModelId, inputs: Sequence[str | list[int]]) -> list[tuple[int, ...]]:
        tokenizer = self._tokenizers.tokenizer_for(model_id)
        token_lists: list[tuple[int, ...]] = []
        for index, item in enumerate(inputs):
            tokens = tuple(tokenizer.encode_text(item)) if isinstance(item, str) else tuple(item)
            if not tokens:
                raise InvalidRequestError(f"input {index} is empty", param="input")
            if any(not 0 <= token < tokenizer.vocab_size for token in tokens):
                raise InvalidRequestError(f"input {index} has a token id outside the vocabulary", param="input")
            if len(tokens) >= tokenizer.context_length:
                raise InvalidRequestError(
                    f"input {index} has {len(tokens)} tokens; the model's context is {tokenizer.context_length}",
                    param="input",
                    code="context_length_exceeded",
                )
            token_lists.append(tokens)
        return token_lists

    async def _embed_one(self, model_id: ModelId, request_id: RequestId, tokens: tuple[int, ...]) -> bytes:
        token_request = TokenRequest(
            request_id=request_id,
            model_id=model_id,
            prompt_tokens=tokens,
            max_tokens=1,
            sampling=SamplingOptions(return_embedding=True),
            stop_token_ids=(),
        )
        events = self._token_source.generate(token_request)
        try:
            async for event in events:
                if isinstance(event, GeneratedToken) and event.embedding:
                    return event.embedding
        finally:
            await close_token_stream(events)
        raise PipelineError("the shards returned no embedding")
