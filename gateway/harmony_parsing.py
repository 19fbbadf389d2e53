"""gpt-oss's Harmony output split into reasoning, answer and tool calls, incrementally.

A Harmony reply is a sequence of messages, each `<|start|>assistant` (the generation prompt wrote the
first one's) + a header (`<|channel|>analysis`, `<|channel|>final`, or `<|channel|>commentary
to=functions.NAME <|constrain|>json`, the recipient possibly before the channel) + `<|message|>` +
a body, ended by `<|end|>` (or the end-of-turn tokens `<|return|>` / `<|call|>`, which end the
generation and never reach the text). The markers are special tokens, so the engine decodes such
a model's tokens with special tokens kept. Bodies of `analysis` are reasoning, of `final` (and of
commentary without a recipient, a preamble) the answer, of a message to `functions.NAME` a call whose
arguments are the body's JSON. Text that fits none of this is answer text, unchanged.
"""

import json
import re
from typing import Literal, cast

from gateway.output_pieces import CallPiece, OutputPiece, ReasoningPiece, TextPiece, partial_tag_length

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
END = "<|end|>"
_RECIPIENT = re.compile(r"to=(\S+?)(?=<\||\s|$)")
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*(\w+)")


class HarmonyParser:
    def __init__(self) -> None:
        self._state: Literal["header", "body"] = "header"
        self._pending: str = ""
        self._header: str = ""
        self._body = ""
        """A call's arguments, collected until the message ends."""
        self._messages = 0

    def feed(self, text: str) -> list[OutputPiece]:
        self._pending += text
        pieces: list[OutputPiece] = []
        while True:
            if self._state == "header":
                end = self._pending.find(MESSAGE)
                if end < 0:
                    head = self._pending.lstrip()
                    if not self._messages and head and not head.startswith("<|") and not "<|".startswith(head):
                        # The reply does not open with a header: plain text, read as the final answer.
                        self._header, self._state, self._messages = f"{CHANNEL}final", "body", 1
                        continue
                    return pieces
                self._header, self._pending = self._pending[:end], self._pending[end + len(MESSAGE) :]
                self._state = "body"
                self._messages += 1
                continue
            end = self._pending.find(END)
            if end >= 0:
                body, self._pending = self._pending[:end], self._pending[end + len(END) :]
                pieces.extend(self._body_piece(body, complete=True))
                self._state, self._header = "header", ""
                self._pending = self._pending.removeprefix(START)
                continue
            held = max(partial_tag_length(self._pending, END), partial_tag_length(self._pending, START))
            ready = self._pending[: len(self._pending) - held]
            self._pending = self._pending[len(self._pending) - held :]
            pieces.extend(self._body_piece(ready, complete=False))
            return pieces

    def finish(self) -> list[OutputPiece]:
        pending: str = self._pending
        self._pending = ""
        if self._state == "header":
            return [TextPiece(pending)] if pending.strip() else []
        return self._body_piece(pending, complete=True)

    def _body_piece(self, text: str, *, complete: bool) -> list[OutputPiece]:
        recipient = _RECIPIENT.search(self._header)
        if recipient is not None and recipient.group(1).startswith("functions."):
            self._body += text
            if not complete:
                return []
            body, self._body = self._body, ""
            return [_call(recipient.group(1).removeprefix("functions."), body)]
        if not text:
            return []
        channel = _CHANNEL_NAME.search(self._header)
        if channel is not None and channel.group(1) == "analysis":
            return [ReasoningPiece(text)]
        return [TextPiece(text)]


def _call(name: str, body: str) -> OutputPiece:
    try:
        arguments: object = json.loads(body) if body.strip() else {}
    except ValueError:
        arguments = None
    if not name or not isinstance(arguments, dict):
        return TextPiece(body)
    return CallPiece(name=name, arguments=cast(dict[str, object], arguments))
