"""The OpenAI REST endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Each handler decodes the body (`decode_json_body`), makes one engine call and encodes the reply;
errors are raised and mapped by `gateway.errors`. With `stream: true` the reply is Server-Sent
Events: `data: {chunk}` lines, then `data: [DONE]`. The engine is started before the response
begins, so an error that comes before any text still gets its own HTTP status; an error after that
arrives as a final `data: {"error": ...}` event before `[DONE]`.

A client that disconnects cancels its request: streaming responses are cancelled by Starlette,
and non-streaming handlers watch for the disconnect themselves while they wait.
"""

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Send

from gateway.completion_engine import CompletionEngine
from gateway.errors import describe_error
from gateway.generation_request import (
    ModelNotFoundError,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
)
from gateway.openai_schemas import (
    ChatCompletionRequest,
    ChatEncoder,
    CompletionEncoder,
    CompletionRequest,
    ModelCard,
    ModelList,
    ReplyEncoder,
    unix_time,
)
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from services.kernel.ids import ModelId, RequestId

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""The status logged for a request whose client left before the reply (nobody receives it)."""

_Result = TypeVar("_Result")


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
        request_id = _new_request_id("chatcmpl")
        encoder = ChatEncoder(id=request_id, model=body.model, created=unix_time())
        return await _reply(request, engine, body.to_generation_request(request_id), encoder, body)

    @router.post("/completions")
    async def create_completion(request: Request) -> Response:
        body = await decode_json_body(request, CompletionRequest, max_body_bytes)
        request_id = _new_request_id("cmpl")
        encoder = CompletionEncoder(id=request_id, model=body.model, created=unix_time())
        return await _reply(request, engine, body.to_generation_request(request_id), encoder, body)

    @router.get("/models")
    async def list_models() -> Response:
        cards = tuple(ModelCard(id=model_id, created=listed_since) for model_id in catalog.served_models())
        return _json(ModelList(data=cards))

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        if model_id not in catalog.served_models():
            raise ModelNotFoundError(model_id)
        return _json(ModelCard(id=model_id, created=listed_since))

    return router


async def _reply(
    request: Request,
    engine: CompletionEngine,
    generation: TextGenerationRequest,
    encoder: ReplyEncoder,
    options: ChatCompletionRequest | CompletionRequest,
) -> Response:
    request_id = generation.request_id
    if options.stream:
        return await _stream_reply(request, request_id, engine.start(generation), encoder, options.include_usage)
    return await _whole_reply(request, request_id, engine.run(generation), encoder)


def _new_request_id(prefix: str) -> RequestId:
    return RequestId(f"{prefix}-{uuid.uuid4().hex}")


def _json(reply: BaseModel) -> Response:
    return Response(reply.model_dump_json(), media_type="application/json")


async def _whole_reply(
    request: Request, request_id: RequestId, events: AsyncGenerator[TextEvent], encoder: ReplyEncoder
) -> Response:
    outcome = await _unless_disconnected(request, request_id, _collect(events))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    text, finished = outcome
    return _json(encoder.whole(text, finished))


async def _collect(events: AsyncGenerator[TextEvent]) -> tuple[str, TextFinished]:
    parts: list[str] = []
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text):
                    parts.append(text)
                case TextFinished():
                    return "".join(parts), event
                case TextStarted():
                    pass
    raise RuntimeError("the generation ended without a TextFinished event")


async def _stream_reply(
    request: Request,
    request_id: RequestId,
    starting: Coroutine[Any, Any, AsyncGenerator[TextEvent]],
    encoder: ReplyEncoder,
    include_usage: bool,
) -> Response:
    events = await _unless_disconnected(request, request_id, starting)
    if events is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return _ClosingStreamingResponse(
        _server_sent_events(request_id, events, encoder, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its event stream as soon as the response ends, also when the client went away.

    Under ASGI 2.4 servers (uvicorn) Starlette learns of a disconnect only when a send fails, and then
    leaves the stream to the garbage collector: the request would go on generating on every shard
    until it finished. Closing it here cancels it at once.
    """

    def __init__(self, stream: AsyncGenerator[str], media_type: str, headers: dict[str, str]) -> None:
        super().__init__(stream, media_type=media_type, headers=headers)
        self._stream = stream

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self._stream.aclose()


async def _server_sent_events(
    request_id: RequestId, events: AsyncGenerator[TextEvent], encoder: ReplyEncoder, include_usage: bool
) -> AsyncGenerator[str]:
    async with aclosing(events):
        try:
            opening = encoder.opening()
            if opening is not None:
                yield _event(opening.model_dump_json())
            async for event in events:
                match event:
                    case TextDelta(text=text):
                        yield _event(encoder.delta(text).model_dump_json())
                    case TextFinished(reason=reason):
                        yield _event(encoder.finish(reason).model_dump_json())
                        if include_usage:
                            yield _event(encoder.usage(event).model_dump_json())
                    case TextStarted():
                        pass
        except Exception as error:  # the status line is gone: report in-band, then end the stream
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", request_id, description.status)
            yield _event(json.dumps(description.body.model_dump()))
    yield _event("[DONE]")


def _event(data: str) -> str:
    return f"data: {data}\n\n"


async def _unless_disconnected(
    request: Request, request_id: RequestId, work: Coroutine[Any, Any, _Result]
) -> _Result | None:
    """Runs `work` unless the client disconnects first: then cancels it and returns None."""
    work_task = asyncio.ensure_future(work)
    disconnect_task = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work_task, disconnect_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.wait((work_task,))
    if work_task.cancelled():
        logger.info("request %s: client disconnected; request cancelled", request_id)
        return None
    return work_task.result()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
