"""The OpenAI REST endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Each handler decodes the body (`decode_json_body`), makes one engine call and encodes the reply;
errors are raised and mapped by `gateway.errors`. With `stream: true` the reply is Server-Sent
Events: `data: {chunk}` lines, then `data: [DONE]`. The engine is started before the response
begins, so an error that comes before any text still gets its own HTTP status; an error after that
arrives as a final `data: {"error": ...}` event before `[DONE]`.

A client that disconnects cancels its request: streaming responses are cancelled by Starlette,
and non-streaming handlers watch for the disconnect themselves while they wait.
"""

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Protocol

from fastapi import APIRouter, Request, Response

from gateway.collected_output import CollectedOutput
from gateway.completion_engine import CompletionEngine
from gateway.dialect_replies import (
    client_closed_reply,
    event_stream_reply,
    json_reply,
    new_request_id,
    unless_disconnected,
)
from gateway.errors import describe_error
from gateway.generation_request import (
    ModelNotFoundError,
    ReasoningDelta,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    ToolCallDelta,
)
from gateway.openai_choices import (
    choice_requests,
    combined_reply,
    indexed_reply,
    interleaved,
    started_choices,
    total_usage,
    whole_choices,
)
from gateway.openai_schemas import (
    ChatCompletionRequest,
    ChatEncoder,
    CompletionEncoder,
    CompletionRequest,
    ModelCard,
    ModelList,
    unix_time,
)
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from services.kernel.ids import ModelId, RequestId

logger = logging.getLogger(__name__)


class ModelCatalog(Protocol):
    def served_models(self) -> Sequence[ModelId]:
        """Every model this cluster serves (ready or still loading)."""
        ...

    def is_ready(self, model_id: ModelId) -> bool:
        """Whether at least one instance of the model can take requests now."""
        ...


def openai_router(
    engine: CompletionEngine, catalog: ModelCatalog, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> APIRouter:
    router = APIRouter(prefix="/v1")
    listed_since = unix_time()

    @router.post("/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        body = await decode_json_body(request, ChatCompletionRequest, max_body_bytes)
        request_id = new_request_id("chatcmpl")
        encoder = ChatEncoder(id=request_id, model=body.model, created=unix_time())
        return await _reply(request, engine, body.to_generation_request(request_id), encoder, body)

    @router.post("/completions")
    async def create_completion(request: Request) -> Response:
        body = await decode_json_body(request, CompletionRequest, max_body_bytes)
        request_id = new_request_id("cmpl")
        encoder = CompletionEncoder(id=request_id, model=body.model, created=unix_time())
        return await _reply(request, engine, body.to_generation_request(request_id), encoder, body)

    @router.get("/models")
    async def list_models() -> Response:
        cards = tuple(ModelCard(id=model_id, created=listed_since) for model_id in catalog.served_models())
        return json_reply(ModelList(data=cards))

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        if model_id not in catalog.served_models():
            raise ModelNotFoundError(model_id)
        return json_reply(ModelCard(id=model_id, created=listed_since))

    return router


async def _reply(
    request: Request,
    engine: CompletionEngine,
    generation: TextGenerationRequest,
    encoder: ChatEncoder | CompletionEncoder,
    options: ChatCompletionRequest | CompletionRequest,
) -> Response:
    request_id = generation.request_id
    generations = choice_requests(generation, options.choices)
    logprobs = generation.sampling.logprobs
    if options.stream:
        streams = await unless_disconnected(request, request_id, started_choices(engine, generations))
        if streams is None:
            return client_closed_reply()
        return event_stream_reply(_server_sent_events(request_id, streams, encoder, options.include_usage, logprobs))
    outcomes = await unless_disconnected(request, request_id, whole_choices(engine, generations))
    if outcomes is None:
        return client_closed_reply()
    usage = total_usage([outcome.finished for outcome in outcomes])
    replies = [
        indexed_reply(encoder.whole(outcome), index, outcome.logprobs if logprobs else None)
        for index, outcome in enumerate(outcomes)
    ]
    return json_reply(combined_reply(replies, encoder.whole(CollectedOutput("", "", (), usage))))


async def _server_sent_events(
    request_id: RequestId,
    streams: Sequence[AsyncGenerator[TextEvent]],
    encoder: ChatEncoder | CompletionEncoder,
    include_usage: bool,
    logprobs: bool,
) -> AsyncGenerator[str]:
    text_lengths = [0] * len(streams)
    """Per choice, the characters streamed so far (completions' `text_offset`)."""
    finishes: dict[int, TextFinished] = {}
    async with aclosing(interleaved(streams)) as events:
        try:
            for index in range(len(streams)):
                opening = encoder.opening()
                if opening is not None:
                    yield _event(indexed_reply(opening, index, None).model_dump_json())
            async for index, event in events:
                match event:
                    case TextDelta(text=text, logprobs=token_logprobs):
                        chunk = indexed_reply(
                            encoder.delta(text), index, token_logprobs if logprobs else None, text_lengths[index]
                        )
                        text_lengths[index] += len(text)
                        yield _event(chunk.model_dump_json())
                    case ReasoningDelta() | ToolCallDelta():
                        side = encoder.side_delta(event)
                        if side is not None:
                            yield _event(indexed_reply(side, index, None).model_dump_json())
                    case TextFinished(reason=reason):
                        finishes[index] = event
                        yield _event(indexed_reply(encoder.finish(reason), index, None).model_dump_json())
                    case TextStarted():
                        pass
            if include_usage:
                usage = total_usage([finishes[index] for index in sorted(finishes)])
                yield _event(encoder.usage(usage).model_dump_json())
        except Exception as error:  # the status line is gone: report in-band, then end the stream
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", request_id, description.status)
            yield _event(json.dumps(description.body.model_dump()))
    yield _event("[DONE]")


def _event(data: str) -> str:
    return f"data: {data}\n\n"
