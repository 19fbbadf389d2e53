"""The grammar that forces a tool call when `tool_choice` is `required` or names a function.

The call is written in the model's own format, so it reads back like any call it made by itself:
`hermes`: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`; `llama3_json`:
`{"name": ..., "parameters": {...}}`. The arguments match the tool's `parameters` schema; for
`required` the name may be any of the tools (one call; `anyOf` over them). After the call the grammar
allows only the end of the turn. When the prompt opened a think block, the grammar closes it first
(the forced reply has no reasoning). Built with `gateway.output_grammar.json_value_grammar`.
"""

from gateway.output_grammar import OutputGrammar, json_value_grammar
from gateway.reasoning_split import THINK_CLOSE
from gateway.tool_call_parsing import HERMES_CLOSE, HERMES_OPEN, ToolCallFormat
from gateway.tool_definitions import NamedToolChoice, ToolChoice, ToolDefinition


def forced_call_grammar(
    tools: tuple[ToolDefinition, ...], choice: ToolChoice, call_format: ToolCallFormat, *, close_reasoning: bool
) -> OutputGrammar | None:
    """The grammar of one forced call; None when `choice` forces nothing (`auto`, `none`), and for
    Harmony, whose call markers are special tokens a text grammar cannot spell."""
    if call_format == "harmony":
        return None
    if isinstance(choice, NamedToolChoice):
        candidates = tuple(tool for tool in tools if tool.name == choice.name)
    elif choice == "required":
        candidates = tools
    else:
        return None
    arguments_key = "parameters" if call_format == "llama3_json" else "arguments"
    calls: list[dict[str, object]] = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, arguments_key: tool.parameters},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for tool in candidates
    ]
    schema: dict[str, object] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    opening = f"{THINK_CLOSE}\n\n" if close_reasoning else ""
    if call_format == "hermes":
        return json_value_grammar(
            schema, prefix=f"{opening}{HERMES_OPEN}\n", suffix=f"\n{HERMES_CLOSE}", param="tool_choice"
        )
    return json_value_grammar(schema, prefix=opening, param="tool_choice")
