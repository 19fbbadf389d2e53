"""The Anthropic Messages dialect: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A small adapter over the one generation path: the body becomes a `TextGenerationRequest` (the model's
own chat template renders the conversation), the engine's text events become Anthropic's reply or
its stream (`message_start`, `content_block_start`, `ping`, `content_block_delta`*, `content_block_stop`,
`message_delta` with the stop reason and usage, `message_stop`). Errors are Anthropic's error JSON,
written by `gateway.errors` for every path under `/v1/messages`.

Content blocks, tools, tool_choice and thinking are mapped in `gateway.anthropic_conversation`. Replies
carry `thinking`, `text` and `tool_use` blocks (stop reason `tool_use` after calls); streamed, each
block opens when its output starts: `thinking_delta`s, `text_delta`s, and per call one
`input_json_delta` with the whole arguments.
"""

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, ClassVar, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.anthropic_conversation import (
    AnthropicMessage,
    AnthropicToolChoice,
    AnthropicTools,
    SystemPrompt,
    ThinkingConfig,
    conversation,
    tool_input_json,
)
from gateway.collected_output import CollectedOutput
from gateway.completion_engine import CompletionEngine
from gateway.dialect_replies import (
    client_closed_reply,
    event_stream_reply,
    json_reply,
    named_event,
    new_request_id,
    started_generation,
    whole_output,
)
from gateway.errors import anthropic_error_body, describe_error
from gateway.generation_request import (
    ChatPrompt,
    ReasoningDelta,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    ToolCallDelta,
    sampling_options,
)
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from gateway.tool_definitions import ChatTemplateOptions, ToolCall
from services.kernel.ids import ModelId, RequestId

logger = logging.getLogger(__name__)

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessagesRequest(BaseModel):
    """The fields of Anthropic's Messages request that strata serves; others are ignored."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[tuple[AnthropicMessage, ...], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    system: SystemPrompt = None
    stop_sequences: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(max_length=16)] = ()
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    metadata: dict[str, object] | None = None
    stream: bool = False
    tools: AnthropicTools = ()
    tool_choice: AnthropicToolChoice | None = None
    thinking: ThinkingConfig | None = None

    def prompt(self) -> ChatPrompt:
        return ChatPrompt(
            messages=conversation(self.system, self.messages),
            tools=tuple(tool.to_definition() for tool in self.tools),
            template_options=self.thinking.to_options() if self.thinking is not None else ChatTemplateOptions(),
        )

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        sampling = sampling_options(temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0)
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=self.prompt(),
            max_tokens=self.max_tokens,
            sampling=sampling,
            stop=self.stop_sequences,
            tool_choice=self.tool_choice.to_choice() if self.tool_choice is not None else "auto",
        )


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[tuple[AnthropicMessage, ...], Field(min_length=1)]
    system: SystemPrompt = None
    tools: AnthropicTools = ()
    thinking: ThinkingConfig | None = None

    def prompt(self) -> ChatPrompt:
        return ChatPrompt(
            messages=conversation(self.system, self.messages),
            tools=tuple(tool.to_definition() for tool in self.tools),
            template_options=self.thinking.to_options() if self.thinking is not None else ChatTemplateOptions(),
        )


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class Usage(_Reply):
    input_tokens: int
    output_tokens: int


class TextBlock(_Reply):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(_Reply):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""
    """Anthropic signs its thinking; strata's is not signed (clients send it back as it is)."""


class ToolUseBlock(_Reply):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, object]

    @classmethod
    def of(cls, call: ToolCall) -> "ToolUseBlock":
        return cls(id=call.id, name=call.name, input=call.arguments)


class Message(_Reply):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: tuple[ThinkingBlock | TextBlock | ToolUseBlock, ...]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(_Reply):
    input_tokens: int


def stop_reason(finished: TextFinished) -> StopReason:
    if finished.reason == "length":
        return "max_tokens"
    if finished.reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def content_blocks(output: CollectedOutput) -> tuple[ThinkingBlock | TextBlock | ToolUseBlock, ...]:
    """Thinking first, then the text (left out when empty beside tool calls), then one block per call."""
    thinking = (ThinkingBlock(thinking=output.reasoning),) if output.reasoning else ()
    text = (TextBlock(text=output.text),) if output.text or not output.tool_calls else ()
    return (*thinking, *text, *(ToolUseBlock.of(call) for call in output.tool_calls))


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
        outcome = await whole_output(request, engine, generation)
        if outcome is None:
            return client_closed_reply()
        finished = outcome.finished
        usage = Usage(input_tokens=finished.prompt_tokens, output_tokens=finished.completion_tokens)
        message = Message(
            id=request_id,
            model=body.model,
            content=content_blocks(outcome),
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
    blocks = _ContentBlocks()
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
                        yield _event("ping", {})
                    case TextDelta(text=text):
                        for framed in blocks.delta("text", {"type": "text_delta", "text": text}):
                            yield framed
                    case ReasoningDelta(text=text):
                        for framed in blocks.delta("thinking", {"type": "thinking_delta", "thinking": text}):
                            yield framed
                    case ToolCallDelta(call=call):
                        for framed in blocks.tool_use(call):
                            yield framed
                    case TextFinished():
                        for framed in blocks.close(ensure_one=True):
                            yield framed
                        delta = {"stop_reason": stop_reason(event), "stop_sequence": event.stop_sequence}
                        usage = {"input_tokens": event.prompt_tokens, "output_tokens": event.completion_tokens}
                        yield _event("message_delta", {"delta": delta, "usage": usage})
                        yield _event("message_stop", {})
        except Exception as error:  # the status line is gone: report in-band, as Anthropic does
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", request_id, description.status)
            yield named_event("error", json.dumps(anthropic_error_body(description)))


class _ContentBlocks:
    """Numbers the streamed content blocks: a block opens when its kind of output starts."""

    _OPENINGS: ClassVar[dict[str, dict[str, object]]] = {
        "text": {"type": "text", "text": ""},
        "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    }

    def __init__(self) -> None:
        self._index = -1
        self._open: str | None = None

    def delta(self, kind: str, delta: dict[str, object]) -> list[str]:
        opened = [] if self._open == kind else [*self.close(), *self._start(self._OPENINGS[kind], kind)]
        return [*opened, _event("content_block_delta", {"index": self._index, "delta": delta})]

    def tool_use(self, call: ToolCall) -> list[str]:
        start: dict[str, object] = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        arguments = {"type": "input_json_delta", "partial_json": tool_input_json(call)}
        return [
            *self.close(),
            *self._start(start, "tool_use"),
            _event("content_block_delta", {"index": self._index, "delta": arguments}),
            *self.close(),
        ]

    def close(self, *, ensure_one: bool = False) -> list[str]:
        """Ends the open block; with `ensure_one`, a reply without any block gets an empty text block."""
        if self._open is None and not (ensure_one and self._index < 0):
            return []
        opened = [] if self._open is not None else self._start(self._OPENINGS["text"], "text")
        self._open = None
        return [*opened, _event("content_block_stop", {"index": self._index})]

    def _start(self, block: dict[str, object], kind: str) -> list[str]:
        self._index += 1
        self._open = kind
        return [_event("content_block_start", {"index": self._index, "content_block": block})]
