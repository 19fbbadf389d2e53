"""What every API dialect's routes share once the body is decoded: running one generation for an HTTP
request, whole or streamed, cancelled when the client goes away.

- `whole_generation` collects the text and the finish, or returns None when the client disconnected
  first (the generation is then cancelled on the shards).
- `started_generation` starts a stream and waits for its first event, so errors before any output
  still get their own HTTP status; None when the client left meanwhile.
- `ClosingStreamingResponse` closes its event stream as soon as the response ends (see its doc).
- `json_reply` writes a reply model. `X-Request-Id` is set on every reply by gateway/request_ids.py.

Each dialect writes its own stream framing (SSE with or without `event:` lines, NDJSON) over these.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Send

from gateway.collected_output import CollectedOutput, collect_output
from gateway.completion_engine import CompletionEngine
from gateway.generation_request import (
    ReasoningDelta,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    ToolCallDelta,
)
from gateway.stream_keepalive import with_keepalive
from services.kernel.ids import RequestId

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""The status logged for a request whose client left before the reply (nobody receives it)."""

_Result = TypeVar("_Result")


def new_request_id(prefix: str) -> RequestId:
    return RequestId(f"{prefix}-{uuid.uuid4().hex}")


def json_reply(reply: BaseModel) -> Response:
    return Response(reply.model_dump_json(), media_type="application/json")


def client_closed_reply() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def whole_generation(
    request: Request, engine: CompletionEngine, generation: TextGenerationRequest
) -> tuple[str, TextFinished] | None:
    """The whole text and its finish; None when the client disconnected first (then it is cancelled)."""
    return await unless_disconnected(request, generation.request_id, collect_text(engine.run(generation)))


async def whole_output(
    request: Request, engine: CompletionEngine, generation: TextGenerationRequest
) -> CollectedOutput | None:
    """The whole output (text, reasoning, tool calls, finish); None when the client disconnected first."""
    return await unless_disconnected(request, generation.request_id, collect_output(engine.run(generation)))


async def started_generation(
    request: Request, engine: CompletionEngine, generation: TextGenerationRequest, *, announce_start: bool = False
) -> AsyncGenerator[TextEvent] | None:
    """The events of a started generation (its first one already read); None when the client left."""
    starting = engine.start(generation, announce_start=announce_start)
    return await unless_disconnected(request, generation.request_id, starting)


async def collect_text(events: AsyncGenerator[TextEvent]) -> tuple[str, TextFinished]:
    parts: list[str] = []
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text):
                    parts.append(text)
                case TextFinished():
                    return "".join(parts), event
                case TextStarted() | ReasoningDelta() | ToolCallDelta():
                    pass
    raise RuntimeError("the generation ended without a TextFinished event")


class ClosingStreamingResponse(StreamingResponse):
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


def event_stream_reply(stream: AsyncGenerator[str]) -> ClosingStreamingResponse:
    """Server-Sent Events, unbuffered by proxies, with a keep-alive comment every 15 s of silence."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return ClosingStreamingResponse(with_keepalive(stream), media_type="text/event-stream", headers=headers)


def named_event(name: str, data: str) -> str:
    """One SSE event with an `event:` line, as Anthropic and the Responses API frame theirs."""
    return f"event: {name}\ndata: {data}\n\n"


async def unless_disconnected(
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
