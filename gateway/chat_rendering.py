"""A conversation as the dicts Hugging Face chat templates read, with or without tool support.

Templates that render tools (`tools=`) get assistant turns with `tool_calls` (arguments as objects,
as Qwen's and Llama's templates `tojson` them), `tool` turns with `tool_call_id` and `name`, and a
turn's earlier reasoning as `reasoning_content` (Qwen3's name). A template without tool support would
drop calls and results silently, so for it they are written into the text instead
(`[tool call NAME: {json}]`, `[tool result ID: text]`, a result read as the user's turn) and
turns of the same role in a row are joined, since such templates expect roles to alternate.
"""

import json
from collections.abc import Sequence

from gateway.generation_request import ChatMessage


def template_conversation(messages: Sequence[ChatMessage], *, supports_tools: bool) -> list[dict[str, object]]:
    if supports_tools:
        return [_template_message(message) for message in messages]
    turns: list[dict[str, object]] = []
    for message in messages:
        role, content = _plain_turn(message)
        if turns and turns[-1]["role"] == role and message.role != "system":
            previous = str(turns[-1]["content"])
            turns[-1] = {"role": role, "content": f"{previous}\n{content}" if previous else content}
        else:
            turns.append({"role": role, "content": content})
    return turns


def _template_message(message: ChatMessage) -> dict[str, object]:
    rendered: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        rendered["tool_calls"] = [call.as_template_call() for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.tool_name is not None:
        rendered["name"] = message.tool_name
    if message.reasoning:
        rendered["reasoning_content"] = message.reasoning
    return rendered


def _plain_turn(message: ChatMessage) -> tuple[str, str]:
    if message.role == "tool":
        return "user", f"[tool result {message.tool_call_id or message.tool_name or ''}: {message.content}]"
    calls = [
        f"[tool call {call.name}: {json.dumps(call.arguments, ensure_ascii=False)}]" for call in message.tool_calls
    ]
    return message.role, "\n".join(part for part in (message.content, *calls) if part)
