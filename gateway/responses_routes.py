"""The OpenAI Responses dialect: `POST /v1/responses`, whole or streamed.

`input` is a string or items: messages (`{"role", "content"}`, content a string or `input_text` /
`output_text` parts), `function_call` items (a call the model made earlier: `call_id`, `name`,
`arguments` as JSON text) and `function_call_output` items (its result: `call_id`, `output`);
`reasoning` items are accepted and left out of the prompt. `instructions` becomes the system turn,
`tools` (`{"type": "function", "name", "description", "parameters"}`) and `tool_choice` (`auto`,
`none`, `required`, `{"type": "function", "name"}`) offer functions, `reasoning.effort` reaches the
chat template. Streams are SSE with `event:` lines: `response.created`, `response.in_progress`, the
items' events (`gateway.responses_output`), `response.completed`, each with a `sequence_number`.
Errors are OpenAI's error JSON; after the stream started, an `error` event. Nothing is stored
(`store` is ignored).
"""

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from gateway.completion_engine import CompletionEngine
from gateway.dialect_replies import (
    client_closed_reply,
    event_stream_reply,
    named_event,
    new_request_id,
    started_generation,
    whole_output,
)
from gateway.errors import describe_error
from gateway.generation_request import (
    ChatMessage,
    ChatPrompt,
    InvalidRequestError,
    ReasoningDelta,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextStarted,
    ToolCallDelta,
    sampling_options,
)
from gateway.openai_schemas import unix_time
from gateway.openai_tools import FunctionCallInput, arguments_object, valid_definition
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from gateway.response_formats import ResponsesText
from gateway.responses_output import ResponseSettings, StreamedItems, response_object, sse_framer, whole_items
from gateway.tool_definitions import (
    MAX_TOOLS,
    ChatTemplateOptions,
    NamedToolChoice,
    ReasoningEffort,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
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


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


class InputMessage(_Input):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_parts_text)]


class FunctionCallItem(FunctionCallInput):
    """A call the model made: name and JSON arguments checked as in chat's `tool_calls`."""

    type: Literal["function_call"]
    call_id: str


class FunctionCallOutputItem(_Input):
    type: Literal["function_call_output"]
    call_id: str
    output: Annotated[str, BeforeValidator(_parts_text)]


class ReasoningItem(_Input):
    type: Literal["reasoning"]


def _item_type(value: object) -> str:
    if isinstance(value, dict):
        return str(cast(dict[str, object], value).get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


class FunctionTool(_Input):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _is_a_valid_tool(self) -> "FunctionTool":
        self.to_definition()
        return self

    def to_definition(self) -> ToolDefinition:
        return valid_definition(self.name, self.description, self.parameters)


class NamedFunctionChoice(_Input):
    type: Literal["function"]
    name: str


class ReasoningOptions(_Input):
    effort: ReasoningEffort | None = None


class ResponsesRequest(_Input):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[tuple[InputItem, ...], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    stream: bool = False
    previous_response_id: str | None = None
    tools: Annotated[tuple[FunctionTool, ...], Field(max_length=MAX_TOOLS)] = ()
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    reasoning: ReasoningOptions | None = None

    @property
    def choice(self) -> ToolChoice:
        if isinstance(self.tool_choice, NamedFunctionChoice):
            return NamedToolChoice(name=self.tool_choice.name)
        return self.tool_choice or "auto"

    text: ResponsesText | None = None

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        if self.previous_response_id is not None:
            message = "previous_response_id is not supported: responses are not stored; send the whole input"
            raise InvalidRequestError(message, param="previous_response_id")
        system = (ChatMessage(role="system", content=self.instructions),) if self.instructions else ()
        effort = self.reasoning.effort if self.reasoning is not None else None
        options = ChatTemplateOptions(
            enable_thinking=None if effort is None else effort not in ("none", "minimal"), reasoning_effort=effort
        )
        temperature = 1.0 if self.temperature is None else self.temperature
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=ChatPrompt(
                messages=(*system, *self._turns()),
                tools=tuple(tool.to_definition() for tool in self.tools),
                template_options=options,
            ),
            max_tokens=self.max_output_tokens,
            sampling=sampling_options(temperature=temperature, top_p=1.0 if self.top_p is None else self.top_p),
            tool_choice=self.choice,
            grammar=self.text.grammar() if self.text is not None else None,
        )

    def _turns(self) -> list[ChatMessage]:
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        turns: list[ChatMessage] = []
        for item in self.input:
            match item:
                case InputMessage(role=role, content=content):
                    turns.append(ChatMessage(role="system" if role == "developer" else role, content=content))
                case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
                    call = ToolCall(id=call_id, name=name, arguments=arguments_object(arguments))
                    previous = turns[-1] if turns else None
                    if previous is not None and previous.role == "assistant":  # the calls of that same turn
                        turns[-1] = previous.model_copy(update={"tool_calls": (*previous.tool_calls, call)})
                    else:
                        turns.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))
                case FunctionCallOutputItem(call_id=call_id, output=output):
                    turns.append(ChatMessage(role="tool", content=output, tool_call_id=call_id))
                case ReasoningItem():
                    pass
        if not turns:
            raise InvalidRequestError("input has no message or function call items", param="input")
        return turns

    def settings(self, request_id: RequestId) -> ResponseSettings:
        return ResponseSettings(
            id=request_id,
            model=self.model,
            created_at=unix_time(),
            instructions=self.instructions,
            max_output_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            tools=tuple(tool.to_definition() for tool in self.tools),
            tool_choice=self.choice,
        )


def responses_router(engine: CompletionEngine, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/responses")
    async def create_response(request: Request) -> Response:
        body = await decode_json_body(request, ResponsesRequest, max_body_bytes)
        request_id = new_request_id("resp")
        generation = body.to_generation_request(request_id)
        settings = body.settings(request_id)
        if body.stream:
            events = await started_generation(request, engine, generation)
            if events is None:
                return client_closed_reply()
            return event_stream_reply(_response_stream(settings, events))
        outcome = await whole_output(request, engine, generation)
        if outcome is None:
            return client_closed_reply()
        output = whole_items(request_id, outcome)
        document = json.dumps(response_object(settings, "completed", outcome.finished, output), ensure_ascii=False)
        return Response(document, media_type="application/json")

    return router


async def _response_stream(settings: ResponseSettings, events: AsyncGenerator[TextEvent]) -> AsyncGenerator[str]:
    event = sse_framer(named_event)
    items = StreamedItems(settings.id, event)
    async with aclosing(events):
        try:
            yield event("response.created", {"response": response_object(settings, "in_progress")})
            yield event("response.in_progress", {"response": response_object(settings, "in_progress")})
            async for text_event in events:
                framed: list[str] = []
                match text_event:
                    case TextDelta(text=text):
                        framed = items.text("message", text)
                    case ReasoningDelta(text=text):
                        framed = items.text("reasoning", text)
                    case ToolCallDelta(call=call):
                        framed = items.function_call(call)
                    case TextFinished():
                        status = "incomplete" if text_event.reason == "length" else "completed"
                        framed = items.close(status, ensure_message=True)
                        whole = response_object(settings, "completed", text_event, items.items)
                        framed.append(event("response.completed", {"response": whole}))
                    case TextStarted():
                        pass
                for line in framed:
                    yield line
        except Exception as error:  # the status line is gone: report in-band
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", settings.id, description.status)
            detail = description.body.error
            yield event("error", {"code": detail.code, "message": detail.message, "param": detail.param})
