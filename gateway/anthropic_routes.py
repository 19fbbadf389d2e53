"""The Anthropic Messages dialect: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A small adapter over the one generation path: the body becomes a `TextGenerationRequest` (the model's
own chat template renders the conversation), the engine's text events become Anthropic's reply or
its stream (`message_start`, `content_block_start`, `ping`, `content_block_delta`*, `content_block_stop`,
`message_delta` with the stop reason and usage, `message_stop`). Errors are Anthropic's error JSON,
written by `gateway.errors` for every path under `/v1/messages`.

Content blocks: `text`; `tool_use`, `tool_result` and `thinking` are accepted and rendered to the
template as plain text (these models get no tools); images and documents are refused (400).
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
    json_reply,
    named_event,
    new_request_id,
    started_generation,
    whole_generation,
)
from gateway.errors import anthropic_error_body, describe_error
from gateway.generation_request import (
    ChatMessage,
    ChatPrompt,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    sampling_options,
)
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from services.kernel.ids import ModelId, RequestId

logger = logging.getLogger(__name__)

StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


def _block_text(block: object) -> str:
    fields = cast(dict[str, object], block) if isinstance(block, dict) else None
    if fields is None:
        raise PydanticCustomError("invalid_content_block", "a content block must be an object")
    match fields.get("type"):
        case "text" if isinstance(fields.get("text"), str):
            return cast(str, fields["text"])
        case "thinking" if isinstance(fields.get("thinking"), str):
            return f"<thinking>{fields['thinking']}</thinking>"
        case "redacted_thinking":
            return ""
        case "tool_use":
            arguments = json.dumps(fields.get("input", {}), ensure_ascii=False)
            return f"[tool call {fields.get('name', '')}: {arguments}]"
        case "tool_result":
            result = fields.get("content", "")
            text = result if isinstance(result, str) else "\n".join(_block_text(part) for part in _as_list(result))
            return f"[tool result {fields.get('tool_use_id', '')}: {text}]"
        case block_type:
            raise PydanticCustomError(
                "unsupported_content_block",
                "content blocks of type {block_type} are not supported (text, thinking, tool_use and tool_result are)",
                {"block_type": repr(block_type)},
            )


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_content", "content must be a string or a list of content blocks")
    return cast(list[object], value)


def _content_text(value: object) -> object:
    """A string, or content blocks reduced to the one text the template sees."""
    if isinstance(value, str):
        return value
    return "\n".join(text for text in (_block_text(block) for block in _as_list(value)) if text)


Content = Annotated[str, BeforeValidator(_content_text)]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    role: Literal["user", "assistant"]
    content: Content


class MessagesRequest(BaseModel):
    """The fields of Anthropic's Messages request that strata serves; others are ignored."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[tuple[AnthropicMessage, ...], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    system: Content | None = None
    stop_sequences: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(max_length=16)] = ()
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    metadata: dict[str, object] | None = None
    stream: bool = False

    def prompt(self) -> ChatPrompt:
        system = (ChatMessage(role="system", content=self.system),) if self.system else ()
        turns = tuple(ChatMessage(role=message.role, content=message.content) for message in self.messages)
        return ChatPrompt(messages=(*system, *turns))

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        sampling = sampling_options(temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0)
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=self.prompt(),
            max_tokens=self.max_tokens,
            sampling=sampling,
            stop=self.stop_sequences,
        )


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[tuple[AnthropicMessage, ...], Field(min_length=1)]
    system: Content | None = None

    def prompt(self) -> ChatPrompt:
        system = (ChatMessage(role="system", content=self.system),) if self.system else ()
        turns = tuple(ChatMessage(role=message.role, content=message.content) for message in self.messages)
        return ChatPrompt(messages=(*system, *turns))


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class Usage(_Reply):
    input_tokens: int
    output_tokens: int


class TextBlock(_Reply):
    type: Literal["text"] = "text"
    text: str


class Message(_Reply):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: tuple[TextBlock, ...]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(_Reply):
    input_tokens: int


def stop_reason(finished: TextFinished) -> StopReason:
    if finished.reason == "length":
        return "max_tokens"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def anthropic_router(engine: CompletionEngine, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> APIRouter:
    router = APIRouter(prefix="/v1/messages")

    @router.post("")
    async def create_message(request: Request) -> Response:
        body = await decode_json_body(request, MessagesRequest, max_body_bytes)
        request_id = new_request_id("msg")
        generation = body.to_generation_request(request_id)
        if body.stream:
            events = await started_generation(request, engine, generation, announce_start=True)
            if events is None:
                return client_closed_reply()
            return event_stream_reply(_message_stream(request_id, body.model, events))
        outcome = await whole_generation(request, engine, generation)
        if outcome is None:
            return client_closed_reply()
        text, finished = outcome
        usage = Usage(input_tokens=finished.prompt_tokens, output_tokens=finished.completion_tokens)
        message = Message(
            id=request_id,
            model=body.model,
            content=(TextBlock(text=text),),
            stop_reason=stop_reason(finished),
            stop_sequence=finished.stop_sequence,
            usage=usage,
        )
        return json_reply(message)

    @router.post("/count_tokens")
    async def count_tokens(request: Request) -> Response:
        body = await decode_json_body(request, CountTokensRequest, max_body_bytes)
        count = await engine.count_prompt_tokens(ModelId(body.model), body.prompt())
        return json_reply(TokenCount(input_tokens=count))

    return router


def _event(name: str, data: dict[str, object]) -> str:
    return named_event(name, json.dumps({"type": name, **data}, ensure_ascii=False))


async def _message_stream(request_id: RequestId, model: str, events: AsyncGenerator[TextEvent]) -> AsyncGenerator[str]:
    async with aclosing(events):
        try:
            async for event in events:
                match event:
                    case TextStarted(prompt_tokens=prompt_tokens):
                        opening = Message(
                            id=request_id,
                            model=model,
                            content=(),
                            stop_reason=None,
                            stop_sequence=None,
                            usage=Usage(input_tokens=prompt_tokens, output_tokens=0),
                        )
                        yield _event("message_start", {"message": opening.model_dump()})
                        yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                        yield _event("ping", {})
                    case TextDelta(text=text):
                        yield _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
                    case TextFinished():
                        yield _event("content_block_stop", {"index": 0})
                        delta = {"stop_reason": stop_reason(event), "stop_sequence": event.stop_sequence}
                        usage = {"input_tokens": event.prompt_tokens, "output_tokens": event.completion_tokens}
                        yield _event("message_delta", {"delta": delta, "usage": usage})
                        yield _event("message_stop", {})
        except Exception as error:  # the status line is gone: report in-band, as Anthropic does
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", request_id, description.status)
            yield named_event("error", json.dumps(anthropic_error_body(description)))
