"""OpenAI chat's tools and reasoning fields: request schemas and the reply shapes of tool calls.

- `tools`: `[{"type": "function", "function": {"name", "description", "parameters", "strict"}}]`.
- `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name"}}`.
- Messages: assistant turns with `tool_calls` (`{"id", "type": "function", "function": {"name",
  "arguments": JSON text}}`, content may be null), `role: "tool"` turns with `tool_call_id`.
- `reasoning_effort` and `chat_template_kwargs` (vLLM's extension; `enable_thinking` and
  `reasoning_effort` only) reach the chat template.

Replies: `message.tool_calls` and `message.reasoning_content`; streamed, each call is one delta with
its index, id, name and whole arguments, and reasoning streams as `delta.reasoning_content`.
"""

import json
from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.generation_request import ToolCallDelta
from gateway.tool_definitions import (
    MAX_TOOLS,
    ChatTemplateOptions,
    NamedToolChoice,
    ReasoningEffort,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


class FunctionInput(_Input):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _is_a_valid_tool(self) -> "FunctionInput":
        valid_definition(self.name, self.description, self.parameters)
        return self


def valid_definition(name: str, description: str | None, parameters: dict[str, object] | None) -> ToolDefinition:
    """The tool, or ValueError with the first reason it is not one (inside a schema: a 400 naming the field)."""
    try:
        if parameters is None:
            return ToolDefinition(name=name, description=description)
        return ToolDefinition(name=name, description=description, parameters=parameters)
    except ValidationError as error:
        raise ValueError(error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")) from None


class ToolInput(_Input):
    type: Literal["function"]
    function: FunctionInput

    def to_definition(self) -> ToolDefinition:
        return valid_definition(self.function.name, self.function.description, self.function.parameters)


class FunctionName(_Input):
    name: str


class NamedToolChoiceInput(_Input):
    type: Literal["function"]
    function: FunctionName


ToolChoiceInput = Literal["auto", "none", "required"] | NamedToolChoiceInput
ToolInputs = Annotated[tuple[ToolInput, ...], Field(max_length=MAX_TOOLS)]


def tool_choice(choice: ToolChoiceInput | None) -> ToolChoice:
    if choice is None:
        return "auto"
    if isinstance(choice, NamedToolChoiceInput):
        return NamedToolChoice(name=choice.function.name)
    return choice


class FunctionCallInput(_Input):
    name: str
    arguments: str
    """JSON text of the arguments object, as OpenAI sends it."""

    @field_validator("arguments")
    @classmethod
    def _arguments_are_an_object(cls, arguments: str) -> str:
        arguments_object(arguments)
        return arguments


def arguments_object(text: str) -> dict[str, object]:
    """JSON text of an arguments object (empty text: no arguments); raises ValueError otherwise."""
    try:
        arguments: object = json.loads(text) if text.strip() else {}
    except ValueError:
        raise ValueError("tool call arguments must be JSON text of an object") from None
    if not isinstance(arguments, dict):
        raise ValueError("tool call arguments must be JSON text of an object")
    return cast(dict[str, object], arguments)


class ToolCallInput(_Input):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallInput

    def to_tool_call(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.function.name, arguments=arguments_object(self.function.arguments))


class TemplateKeywords(_Input):
    enable_thinking: bool | None = None
    reasoning_effort: ReasoningEffort | None = None


def template_options(effort: ReasoningEffort | None, keywords: TemplateKeywords | None) -> ChatTemplateOptions:
    """`reasoning_effort` `none`/`minimal` also turn Qwen3's thinking off; explicit keywords win."""
    enable_thinking = None if effort is None else effort not in ("none", "minimal")
    if keywords is not None and keywords.enable_thinking is not None:
        enable_thinking = keywords.enable_thinking
    if keywords is not None and keywords.reasoning_effort is not None:
        effort = keywords.reasoning_effort
    return ChatTemplateOptions(enable_thinking=enable_thinking, reasoning_effort=effort)


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class FunctionCallReply(_Reply):
    name: str
    arguments: str


class ToolCallReply(_Reply):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallReply

    @classmethod
    def of(cls, call: ToolCall) -> "ToolCallReply":
        return cls(id=call.id, function=FunctionCallReply(name=call.name, arguments=call.arguments_json))


def tool_call_delta(delta: ToolCallDelta) -> dict[str, object]:
    """A streamed chunk's `delta` for one whole call."""
    return {"tool_calls": [{"index": delta.index, **ToolCallReply.of(delta.call).model_dump()}]}
