"""Tools (function calling) and reasoning switches, in the one form every API dialect maps onto.

- `ToolDefinition`: a function the model may call: a name, a description and a JSON schema for its
  arguments (`parameters`). Dialects name these fields differently (Anthropic's `input_schema`);
  their adapters translate.
- `ToolCall`: a call the model made (parsed from its text) or made earlier in the conversation:
  an id, the function's name and its arguments as a JSON object.
- `ToolChoice`: `auto` (the model decides), `none` (no tools are shown to the model and nothing is
  parsed as a call), `required` (at least one call) or `NamedToolChoice` (exactly that function).
- `ChatTemplateOptions`: the keyword arguments chat templates read to switch thinking on or off
  (Qwen3's `enable_thinking`, gpt-oss's `reasoning_effort`); a template without them ignores them.

Pure: no HTTP, no tokenizer.
"""

import json
import re
import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""OpenAI's rule for function names (letters, digits, `_`, `-`; we also allow `.` and `:`), 1-64 long."""
MAX_TOOLS = 128

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]


class ToolDefinition(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    name: str
    description: str | None = None
    parameters: dict[str, object] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """A JSON schema for the arguments object."""

    @field_validator("name")
    @classmethod
    def _name_is_a_function_name(cls, name: str) -> str:
        if not TOOL_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_', '-', '.' or ':'")
        return name

    @field_validator("parameters")
    @classmethod
    def _parameters_describe_an_object(cls, parameters: dict[str, object]) -> dict[str, object]:
        declared = parameters.get("type", "object")
        if declared != "object":
            raise ValueError(f"a tool's parameters must be a JSON schema of type 'object', not {declared!r}")
        return parameters

    def as_template_tool(self) -> dict[str, object]:
        """The shape Hugging Face chat templates expect in `tools=`: OpenAI's function tool."""
        function: dict[str, object] = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    id: str
    name: str
    arguments: dict[str, object]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)

    def as_template_call(self) -> dict[str, object]:
        """The shape chat templates render in an assistant turn's `tool_calls` (arguments as an object)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class ChatTemplateOptions(BaseModel):
    """Template switches for thinking; None leaves the template's own default."""

    model_config = ConfigDict(frozen=True, strict=True)

    enable_thinking: bool | None = None
    reasoning_effort: ReasoningEffort | None = None

    def template_arguments(self) -> dict[str, object]:
        arguments: dict[str, object] = {}
        if self.enable_thinking is not None:
            arguments["enable_thinking"] = self.enable_thinking
        if self.reasoning_effort is not None:
            arguments["reasoning_effort"] = self.reasoning_effort
        return arguments


Tools = Annotated[tuple[ToolDefinition, ...], Field(max_length=MAX_TOOLS)]


def check_tool_choice(tools: tuple[ToolDefinition, ...], choice: ToolChoice) -> None:
    """Raises ValueError when `choice` cannot be honoured with `tools` (names must be unique too)."""
    names = [tool.name for tool in tools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique; repeated: {', '.join(duplicates)}")
    if choice == "required" and not tools:
        raise ValueError("tool_choice 'required' needs at least one tool")
    if isinstance(choice, NamedToolChoice) and choice.name not in names:
        raise ValueError(f"tool_choice names the function {choice.name!r}, which is not among the tools")


def new_tool_call_id(prefix: str = "call") -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
