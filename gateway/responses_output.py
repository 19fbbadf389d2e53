"""The Responses API's output: the `response` object and its items, whole or as a stream of events.

Output items, in the order the model wrote them: a `reasoning` item (its think block, as one
`reasoning_text` part), a `message` item (the answer, one `output_text` part; left out when the
turn is only tool calls) and one `function_call` item per call (`call_id`, `name`, `arguments` as
JSON text). Streamed, an item opens when its output starts (`response.output_item.added`), its
text streams as `response.reasoning_text.delta` / `response.output_text.delta` /
`response.function_call_arguments.delta`, and it ends with the matching `.done` events and
`response.output_item.done`; everything is numbered by `sequence_number`.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.collected_output import CollectedOutput
from gateway.generation_request import TextFinished
from gateway.tool_definitions import NamedToolChoice, ToolCall, ToolChoice, ToolDefinition

ItemKind = Literal["reasoning", "message", "function_call"]


def output_text_part(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


@dataclass
class ResponseSettings:
    """What the response object echoes of its request."""

    id: str
    model: str
    created_at: int
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice = "auto"


@dataclass
class OutputItems:
    """Ids and contents of one response's output items, in order."""

    response_id: str
    items: list[dict[str, object]] = field(default_factory=list[dict[str, object]])

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}-{self.response_id.removeprefix('resp-')}-{len(self.items)}"

    def reasoning(self, text: str, status: str) -> dict[str, object]:
        content = [{"type": "reasoning_text", "text": text}] if text else []
        return {"type": "reasoning", "id": self._item_id("rs"), "summary": [], "content": content, "status": status}

    def message(self, text: str, status: str) -> dict[str, object]:
        content = [output_text_part(text)]
        return {
            "type": "message",
            "id": self._item_id("msg"),
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def function_call(self, call: ToolCall, arguments: str, status: str) -> dict[str, object]:
        return {
            "type": "function_call",
            "id": self._item_id("fc"),
            "call_id": call.id,
            "name": call.name,
            "arguments": arguments,
            "status": status,
        }


def whole_items(response_id: str, output: CollectedOutput) -> list[dict[str, object]]:
    status = "incomplete" if output.finished.reason == "length" else "completed"
    items = OutputItems(response_id)
    if output.reasoning:
        items.items.append(items.reasoning(output.reasoning, status))
    if output.text or not output.tool_calls:
        items.items.append(items.message(output.text, status))
    for call in output.tool_calls:
        items.items.append(items.function_call(call, call.arguments_json, "completed"))
    return items.items


def response_object(
    settings: ResponseSettings,
    status: str,
    finished: TextFinished | None = None,
    output: list[dict[str, object]] | None = None,
) -> dict[str, object]:
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
    choice = settings.tool_choice
    return {
        "id": settings.id,
        "object": "response",
        "created_at": settings.created_at,
        "status": "incomplete" if incomplete else status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": settings.instructions,
        "max_output_tokens": settings.max_output_tokens,
        "model": settings.model,
        "output": output or [],
        "parallel_tool_calls": True,
        "temperature": settings.temperature,
        "tool_choice": {"type": "function", "name": choice.name} if isinstance(choice, NamedToolChoice) else choice,
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": False,
            }
            for tool in settings.tools
        ],
        "top_p": settings.top_p,
        "usage": usage,
        "metadata": {},
    }


class StreamedItems:
    """The events of a streamed response's items; `event` frames one SSE event with its number."""

    def __init__(self, response_id: str, event: Callable[[str, dict[str, object]], str]) -> None:
        self._items = OutputItems(response_id)
        self._event = event
        self._open: ItemKind | None = None
        self._text = ""

    @property
    def items(self) -> list[dict[str, object]]:
        return self._items.items

    def text(self, kind: Literal["reasoning", "message"], delta: str) -> list[str]:
        framed = [] if self._open == kind else [*self.close("completed"), *self._start(kind)]
        self._text += delta
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra: dict[str, object] = {"logprobs": []} if kind == "message" else {}
        return [*framed, self._event(name, {**self._where(), "delta": delta, **extra})]

    def function_call(self, call: ToolCall) -> list[str]:
        framed = self.close("completed")
        arguments = call.arguments_json
        item = self._items.function_call(call, "", "in_progress")
        index = len(self.items)
        self.items.append(item)
        where = {"item_id": item["id"], "output_index": index}
        done = {**item, "arguments": arguments, "status": "completed"}
        self.items[index] = done
        return [
            *framed,
            self._event("response.output_item.added", {"output_index": index, "item": item}),
            self._event("response.function_call_arguments.delta", {**where, "delta": arguments}),
            self._event("response.function_call_arguments.done", {**where, "name": call.name, "arguments": arguments}),
            self._event("response.output_item.done", {"output_index": index, "item": done}),
        ]

    def close(self, status: str, *, ensure_message: bool = False) -> list[str]:
        """Ends the open item; with `ensure_message`, a response with no item gets an empty message."""
        if self._open is None:
            if not ensure_message or self.items:
                return []
            return [*self._start("message"), *self.close(status)]
        index = len(self.items) - 1
        kind, text, self._open, self._text = self._open, self._text, None, ""
        where = self._where(index)
        if kind == "message":
            item = self._items.message(text, status) | {"id": self.items[index]["id"]}
            framed = [
                self._event("response.output_text.done", {**where, "text": text, "logprobs": []}),
                self._event("response.content_part.done", {**where, "part": output_text_part(text)}),
            ]
        else:
            item = self._items.reasoning(text, status) | {"id": self.items[index]["id"]}
            framed = [self._event("response.reasoning_text.done", {**where, "text": text})]
        self.items[index] = item
        return [*framed, self._event("response.output_item.done", {"output_index": index, "item": item})]

    def _start(self, kind: Literal["reasoning", "message"]) -> list[str]:
        self._open = kind
        item = self._items.message("", "in_progress") if kind == "message" else self._items.reasoning("", "in_progress")
        item = {**item, "content": list[object]()}
        self.items.append(item)
        index = len(self.items) - 1
        framed = [self._event("response.output_item.added", {"output_index": index, "item": item})]
        if kind == "message":
            framed.append(self._event("response.content_part.added", {**self._where(), "part": output_text_part("")}))
        return framed

    def _where(self, index: int | None = None) -> dict[str, object]:
        position = len(self.items) - 1 if index is None else index
        return {"item_id": self.items[position]["id"], "output_index": position, "content_index": 0}


def sse_framer(named_event: Callable[[str, str], str]) -> Callable[[str, dict[str, object]], str]:
    """Frames events with `type` and a `sequence_number` counting from 0."""
    sequence = 0

    def frame(name: str, data: dict[str, object]) -> str:
        nonlocal sequence
        framed = named_event(name, json.dumps({"type": name, "sequence_number": sequence, **data}, ensure_ascii=False))
        sequence += 1
        return framed

    return frame
