"""Tool calls parsed back out of a model's generated text, incrementally, for each family's format.

Fed the text deltas of one generation (`feed`), a parser returns `TextPiece`s (the answer) and
`CallPiece`s (complete calls) as soon as it is sure of them, holding back only text that may still
turn out to be markup; `finish` returns the rest. The pieces' order is the text's order.

Formats (`tool_call_format` picks one from the chat template):
- `hermes` (Qwen2.5/Qwen3, Hermes, SmolLM3...): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  any number, possibly after some text. Whitespace around the calls is not content.
- `llama3_json` (Llama 3.1-3.3): the whole reply is `{"name": ..., "parameters": {...}}` (after
  `<|python_tag|>`, a special token the detokenizer drops), or several separated by `;`.
  Decided by the reply's first character: `{` holds everything back until the end.

A call whose JSON does not parse, or lacks a name or an arguments object, is not a call: its text is
given back as a `TextPiece`, unchanged, so nothing is lost. An unclosed `<tool_call>` at the end (the
model stopped at its end-of-turn token, or ran out of tokens) is a call when its JSON parses.
gpt-oss's Harmony format (special-token markers, reasoning and calls in channels) is parsed by
`gateway.harmony_parsing`.
"""

import json
from typing import Literal, Protocol, cast

from gateway.output_pieces import CallPiece, TextPiece, held_length

ToolCallFormat = Literal["hermes", "llama3_json", "harmony"]
"""`harmony` (gpt-oss) is split by `gateway.harmony_parsing`, calls and reasoning together."""

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
HARMONY_CHANNEL = "<|channel|>"

ParsedPiece = TextPiece | CallPiece


class ToolCallParser(Protocol):
    def feed(self, text: str) -> list[ParsedPiece]: ...

    def finish(self) -> list[ParsedPiece]: ...


def tool_call_format(chat_template: str) -> ToolCallFormat | None:
    """The call format a chat template teaches its model; None when the template renders no tools."""
    if "tools" not in chat_template and "tool_calls" not in chat_template:
        return None
    if HARMONY_CHANNEL in chat_template:
        return "harmony"
    if HERMES_OPEN in chat_template:
        return "hermes"
    if PYTHON_TAG in chat_template or "<|start_header_id|>" in chat_template:
        return "llama3_json"
    return "hermes"


def tool_call_parser(call_format: ToolCallFormat) -> ToolCallParser:
    match call_format:
        case "hermes":
            return HermesToolCallParser()
        case "llama3_json":
            return Llama3JsonToolCallParser()
        case "harmony":
            raise ValueError("Harmony output is split by gateway.harmony_parsing, not a tool-call parser")


def parse_call_object(value: object) -> CallPiece | None:
    """`{"name": str, "arguments" | "parameters": object or JSON text of one}` as a call, else None."""
    if not isinstance(value, dict):
        return None
    fields = cast(dict[str, object], value)
    name = fields.get("name")
    arguments = fields.get("arguments", fields.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = cast(object, json.loads(arguments))
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return CallPiece(name=name, arguments=cast(dict[str, object], arguments))


def _parse_call_text(text: str) -> CallPiece | None:
    try:
        return parse_call_object(json.loads(text))
    except ValueError:
        return None


class HermesToolCallParser:
    def __init__(self) -> None:
        self._pending = ""
        self._inside_call = False
        self._calls_seen = 0

    def feed(self, text: str) -> list[ParsedPiece]:
        self._pending += text
        pieces: list[ParsedPiece] = []
        while True:
            if self._inside_call:
                end = self._pending.find(HERMES_CLOSE)
                if end < 0:
                    return pieces
                body, self._pending = self._pending[:end], self._pending[end + len(HERMES_CLOSE) :]
                self._inside_call = False
                pieces.append(self._call_or_text(body, closed=True))
                continue
            start = self._pending.find(HERMES_OPEN)
            if start >= 0:
                before = self._pending[:start]
                self._pending = self._pending[start + len(HERMES_OPEN) :]
                self._inside_call = True
                if before.strip():
                    pieces.append(TextPiece(before.rstrip()))
                continue
            # Hold back what may start the tag, and trailing whitespace (it is not content before a call).
            held = held_length(self._pending, HERMES_OPEN)
            ready = self._pending[: len(self._pending) - held]
            self._pending = self._pending[len(self._pending) - held :]
            if ready:
                pieces.append(TextPiece(ready))
            return pieces

    def finish(self) -> list[ParsedPiece]:
        pending, self._pending = self._pending, ""
        if self._inside_call:
            self._inside_call = False
            return [self._call_or_text(pending, closed=False)]
        if not pending or (self._calls_seen and not pending.strip()):
            return []
        return [TextPiece(pending)]

    def _call_or_text(self, body: str, *, closed: bool) -> ParsedPiece:
        call = _parse_call_text(body)
        if call is None:
            return TextPiece(f"{HERMES_OPEN}{body}{HERMES_CLOSE if closed else ''}")
        self._calls_seen += 1
        return call


class Llama3JsonToolCallParser:
    def __init__(self) -> None:
        self._pending = ""
        self._mode: Literal["undecided", "json", "text"] = "undecided"

    def feed(self, text: str) -> list[ParsedPiece]:
        if self._mode == "text":
            return [TextPiece(text)] if text else []
        self._pending += text
        if self._mode == "undecided":
            head = self._pending.lstrip().removeprefix(PYTHON_TAG).lstrip()
            if not head or PYTHON_TAG.startswith(head):
                return []  # only whitespace (or part of the tag) so far
            if head.startswith("{"):
                self._mode = "json"
                return []
            self._mode = "text"
            pending, self._pending = self._pending, ""
            return [TextPiece(pending)]
        return []

    def finish(self) -> list[ParsedPiece]:
        pending, self._pending = self._pending, ""
        if self._mode != "json":
            return [TextPiece(pending)] if pending else []
        calls = _json_calls(pending.strip().removeprefix(PYTHON_TAG))
        return list(calls) if calls else [TextPiece(pending)]


def _json_calls(text: str) -> list[CallPiece] | None:
    """One or more call objects separated by `;` or whitespace; None unless all of the text is calls."""
    decoder = json.JSONDecoder()
    calls: list[CallPiece] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ";"):
            position += 1
        if position == len(text):
            return calls or None
        try:
            value, position = cast(tuple[object, int], decoder.raw_decode(text, position))
        except ValueError:
            return None
        call = parse_call_object(value)
        if call is None:
            return None
        calls.append(call)
