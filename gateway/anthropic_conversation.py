"""Anthropic Messages' request side: content blocks, tools, tool_choice and thinking, as strata's turns.

- A user message's `tool_result` blocks become `tool` turns (in order, before the message's text),
  its `text` blocks one user turn; an assistant message's `text` is its content, `thinking` its
  earlier reasoning and `tool_use` blocks its tool calls. `redacted_thinking` is dropped; `image` and
  `document` blocks are refused (400).
- `tools`: `[{"name", "description", "input_schema"}]`; `tool_choice`: `{"type": "auto" | "any" |
  "tool" | "none", "name"}` (`any` is `required`, `tool` names one).
- `thinking`: `{"type": "enabled", "budget_tokens"}` or `{"type": "disabled"}` switches the chat
  template's `enable_thinking` (the budget is not enforced: `max_tokens` bounds the whole reply).
"""

import json
from typing import Annotated, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.generation_request import ChatMessage
from gateway.openai_tools import valid_definition
from gateway.tool_definitions import (
    MAX_TOOLS,
    ChatTemplateOptions,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)


def _fields(block: object) -> dict[str, object]:
    if not isinstance(block, dict):
        raise PydanticCustomError("invalid_content_block", "a content block must be an object")
    return cast(dict[str, object], block)


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_content", "content must be a string or a list of content blocks")
    return cast(list[object], value)


def _text_of(value: object, where: str) -> str:
    """A string, or text blocks joined (a tool result's content, the system prompt)."""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for block in _as_list(value):
        fields = _fields(block)
        text = fields.get("text")
        if fields.get("type") != "text" or not isinstance(text, str):
            raise PydanticCustomError(
                "unsupported_content_block", "only text blocks are supported in {where}", {"where": where}
            )
        texts.append(text)
    return "\n".join(texts)


def message_turns(role: Literal["user", "assistant"], content: object) -> list[ChatMessage]:
    """One Anthropic message as strata's turns; raises PydanticCustomError for blocks it cannot take."""
    if isinstance(content, str):
        return [ChatMessage(role=role, content=content)]
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for block in _as_list(content):
        fields = _fields(block)
        match fields.get("type"):
            case "text" if isinstance(fields.get("text"), str):
                texts.append(cast(str, fields["text"]))
            case "thinking" if isinstance(fields.get("thinking"), str):
                reasoning.append(cast(str, fields["thinking"]))
            case "redacted_thinking":
                pass
            case "tool_use" if role == "assistant":
                calls.append(_tool_use(fields))
            case "tool_result" if role == "user":
                tool_use_id = fields.get("tool_use_id")
                if not isinstance(tool_use_id, str):
                    raise PydanticCustomError("invalid_tool_result", "a tool_result block needs its tool_use_id")
                text = _text_of(fields.get("content", ""), "tool_result content")
                results.append(ChatMessage(role="tool", content=text, tool_call_id=tool_use_id))
            case block_type:
                raise PydanticCustomError(
                    "unsupported_content_block",
                    "content blocks of type {block_type} are not supported in {role} messages "
                    "(text, thinking, tool_use from the assistant, tool_result from the user are)",
                    {"block_type": repr(block_type), "role": role},
                )
    if role == "user":
        text_turn = [ChatMessage(role="user", content="\n".join(texts))] if texts or not results else []
        return [*results, *text_turn]
    return [
        ChatMessage(
            role="assistant", content="\n".join(texts), tool_calls=tuple(calls), reasoning="\n".join(reasoning) or None
        )
    ]


def _tool_use(fields: dict[str, object]) -> ToolCall:
    call_id, name, arguments = fields.get("id"), fields.get("name"), fields.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise PydanticCustomError("invalid_tool_use", "a tool_use block needs a string id and name and an input object")
    return ToolCall(id=call_id, name=name, arguments=cast(dict[str, object], arguments))


def _checked_content(value: object) -> object:
    """A string, or the blocks as a tuple (a validator's output is checked as strict Python)."""
    return value if isinstance(value, str) else tuple(_as_list(value))


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    role: Literal["user", "assistant"]
    content: Annotated[str | tuple[dict[str, object], ...], BeforeValidator(_checked_content)]

    @model_validator(mode="after")
    def _blocks_are_supported(self) -> "AnthropicMessage":
        self.turns()
        return self

    def turns(self) -> list[ChatMessage]:
        return message_turns(self.role, self.content if isinstance(self.content, str) else list(self.content))


def system_text(value: object) -> object:
    return value if value is None else _text_of(value, "system")


SystemPrompt = Annotated[str | None, BeforeValidator(system_text)]


class AnthropicTool(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    name: str
    description: str | None = None
    input_schema: dict[str, object]

    @model_validator(mode="after")
    def _is_a_valid_tool(self) -> "AnthropicTool":
        self.to_definition()
        return self

    def to_definition(self) -> ToolDefinition:
        return valid_definition(self.name, self.description, self.input_schema)


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_has_a_name(self) -> "AnthropicToolChoice":
        if self.type == "tool" and self.name is None:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self

    def to_choice(self) -> ToolChoice:
        match self.type:
            case "auto" | "none":
                return self.type
            case "any":
                return "required"
            case "tool":
                return NamedToolChoice(name=self.name or "")


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int | None, Field(ge=1)] = None

    def to_options(self) -> ChatTemplateOptions:
        return ChatTemplateOptions(enable_thinking=self.type != "disabled")


AnthropicTools = Annotated[tuple[AnthropicTool, ...], Field(max_length=MAX_TOOLS)]


def conversation(system: str | None, messages: tuple[AnthropicMessage, ...]) -> tuple[ChatMessage, ...]:
    opening = (ChatMessage(role="system", content=system),) if system else ()
    return (*opening, *(turn for message in messages for turn in message.turns()))


def tool_input_json(call: ToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)
