"""The OpenAI Responses dialect: `POST /v1/responses`, text in and out, whole or streamed.

`input` is a string or message items (`{"role", "content"}`, content a string or `input_text` /
`output_text` parts); `instructions` becomes the system turn. Streams are SSE with `event:` lines:
`response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`*, `response.output_text.done`, `response.content_part.done`,
`response.output_item.done`, `response.completed`, each with a `sequence_number`. Errors are OpenAI's
error JSON; after the stream started, an `error` event. Nothing is stored (`store` is ignored).
"""

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gateway.completion_engine import CompletionEngine
from gateway.dialect_replies import (
    client_closed_reply,
    event_stream_reply,
    named_event,
    new_request_id,
    started_generation,
    whole_generation,
)
from gateway.errors import describe_error
from gateway.generation_request import (
    ChatMessage,
    ChatPrompt,
    InvalidRequestError,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    sampling_options,
)
from gateway.openai_schemas import unix_time
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from gateway.response_formats import ResponsesText
from services.kernel.ids import ModelId, RequestId

logger = logging.getLogger(__name__)


def _parts_text(value: object) -> object:
    if not isinstance(value, list):
        return value
    texts: list[str] = []
    for part in cast(list[object], value):
        fields = cast(dict[str, object], part) if isinstance(part, dict) else {}
        text = fields.get("text")
        if fields.get("type") not in ("input_text", "output_text") or not isinstance(text, str):
            raise PydanticCustomError(
                "unsupported_content_part", "only input_text and output_text content parts are supported"
            )
        texts.append(text)
    return "\n".join(texts)


class InputMessage(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_parts_text)]


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[tuple[InputMessage, ...], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    stream: bool = False
    previous_response_id: str | None = None
    text: ResponsesText | None = None

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        if self.previous_response_id is not None:
            message = "previous_response_id is not supported: responses are not stored; send the whole input"
            raise InvalidRequestError(message, param="previous_response_id")
        turns: tuple[ChatMessage, ...]
        if isinstance(self.input, str):
            turns = (ChatMessage(role="user", content=self.input),)
        else:
            turns = tuple(
                ChatMessage(role="system" if item.role == "developer" else item.role, content=item.content)
                for item in self.input
            )
        system = (ChatMessage(role="system", content=self.instructions),) if self.instructions else ()
        temperature = 1.0 if self.temperature is None else self.temperature
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=ChatPrompt(messages=(*system, *turns)),
            max_tokens=self.max_output_tokens,
            sampling=sampling_options(temperature=temperature, top_p=1.0 if self.top_p is None else self.top_p),
            grammar=self.text.grammar() if self.text is not None else None,
        )


def _output_text(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _ResponseShape:
    """Writes the `response` object (and its output message) at each stage of one response."""

    def __init__(self, request_id: RequestId, body: ResponsesRequest) -> None:
        self.id = request_id
        self.message_id = f"msg-{request_id.removeprefix('resp-')}"
        self.body = body
        self.created_at = unix_time()

    def message(self, text: str, status: str) -> dict[str, object]:
        content = [_output_text(text)]
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def response(self, status: str, finished: TextFinished | None = None, text: str = "") -> dict[str, object]:
        incomplete = finished is not None and finished.reason == "length"
        usage = None
        if finished is not None:
            usage = {
                "input_tokens": finished.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": finished.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": finished.prompt_tokens + finished.completion_tokens,
            }
        output = [self.message(text, "incomplete" if incomplete else "completed")] if finished is not None else []
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.body.instructions,
            "max_output_tokens": self.body.max_output_tokens,
            "model": self.body.model,
            "output": output,
            "parallel_tool_calls": False,
            "temperature": self.body.temperature,
            "tool_choice": "none",
            "tools": [],
            "top_p": self.body.top_p,
            "usage": usage,
            "metadata": {},
        }


def responses_router(engine: CompletionEngine, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/responses")
    async def create_response(request: Request) -> Response:
        body = await decode_json_body(request, ResponsesRequest, max_body_bytes)
        request_id = new_request_id("resp")
        generation = body.to_generation_request(request_id)
        shape = _ResponseShape(request_id, body)
        if body.stream:
            events = await started_generation(request, engine, generation)
            if events is None:
                return client_closed_reply()
            return event_stream_reply(_response_stream(shape, events))
        outcome = await whole_generation(request, engine, generation)
        if outcome is None:
            return client_closed_reply()
        text, finished = outcome
        document = json.dumps(shape.response("completed", finished, text), ensure_ascii=False)
        return Response(document, media_type="application/json")

    return router


async def _response_stream(shape: _ResponseShape, events: AsyncGenerator[TextEvent]) -> AsyncGenerator[str]:
    sequence = 0

    def event(name: str, data: dict[str, object]) -> str:
        nonlocal sequence
        framed = named_event(name, json.dumps({"type": name, "sequence_number": sequence, **data}, ensure_ascii=False))
        sequence += 1
        return framed

    where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
    parts: list[str] = []
    async with aclosing(events):
        try:
            yield event("response.created", {"response": shape.response("in_progress")})
            yield event("response.in_progress", {"response": shape.response("in_progress")})
            in_progress: dict[str, object] = {**shape.message("", "in_progress"), "content": []}
            yield event("response.output_item.added", {"output_index": 0, "item": in_progress})
            yield event("response.content_part.added", {**where, "part": _output_text("")})
            async for text_event in events:
                match text_event:
                    case TextDelta(text=text):
                        parts.append(text)
                        yield event("response.output_text.delta", {**where, "delta": text, "logprobs": []})
                    case TextFinished():
                        text = "".join(parts)
                        yield event("response.output_text.done", {**where, "text": text, "logprobs": []})
                        yield event("response.content_part.done", {**where, "part": _output_text(text)})
                        item = shape.message(text, "incomplete" if text_event.reason == "length" else "completed")
                        yield event("response.output_item.done", {"output_index": 0, "item": item})
                        whole = shape.response("completed", text_event, text)
                        yield event("response.completed", {"response": whole})
                    case TextStarted():
                        pass
        except Exception as error:  # the status line is gone: report in-band
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", shape.id, description.status)
            detail = description.body.error
            yield event("error", {"code": detail.code, "message": detail.message, "param": detail.param})
