"""The pieces a model's generated text is split into, and the one helper every splitter uses.

A model's output is a sequence of plain text (the answer), reasoning text (inside a think block) and
tool calls (parsed from their markup). The splitters (`gateway.reasoning_split`,
`gateway.tool_call_parsing`) are fed text deltas and return these pieces as soon as they are certain.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TextPiece:
    """Answer text, to be shown as the message's content."""

    text: str


@dataclass(frozen=True)
class ReasoningPiece:
    """Text the model wrote inside its think block."""

    text: str


@dataclass(frozen=True)
class CallPiece:
    """One complete tool call: the function's name and its arguments object."""

    name: str
    arguments: dict[str, object]


OutputPiece = TextPiece | ReasoningPiece | CallPiece


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may become the tag)."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


def held_length(text: str, tag: str) -> int:
    """How much of `text`'s end to hold back: what may start `tag`, and the whitespace before it
    (whitespace right before markup is layout, not text)."""
    tag_part = partial_tag_length(text, tag)
    before = text[: len(text) - tag_part]
    return tag_part + len(before) - len(before.rstrip())
