"""A model's think block split from its answer, incrementally.

`ReasoningSplitter` is fed the text deltas of one generation and returns `ReasoningPiece`s (text
inside `<think>...</think>`) and `TextPiece`s (the rest) as soon as it is sure of them; `finish`
returns what it held back. A think block counts only at the start of the reply (after whitespace),
where reasoning models write it; with `starts_in_reasoning` (the chat template opened `<think>` in
the generation prompt, as DeepSeek-R1's and some Qwen3 templates do) the reply begins inside it.
Whitespace right after `<think>`, before `</think>` and right after it is layout, not text.
A reply that ends inside the block (out of tokens) has reasoning and no answer.
"""

from typing import Literal

from gateway.output_pieces import ReasoningPiece, TextPiece, held_length

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

SplitPiece = ReasoningPiece | TextPiece


def prompt_opens_reasoning(rendered_prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open think block (the reply starts as reasoning)."""
    tail = rendered_prompt.rstrip()
    return tail.endswith(THINK_OPEN)


class ReasoningSplitter:
    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self._state: Literal["start", "reasoning", "answer_start", "answer"] = (
            "reasoning" if starts_in_reasoning else "start"
        )
        self._pending = ""
        self._reasoning_started = False

    def feed(self, text: str) -> list[SplitPiece]:
        self._pending += text
        pieces: list[SplitPiece] = []
        while True:
            match self._state:
                case "start":
                    head = self._pending.lstrip()
                    if head.startswith(THINK_OPEN):
                        self._pending = head[len(THINK_OPEN) :]
                        self._state = "reasoning"
                        continue
                    if THINK_OPEN.startswith(head):
                        return pieces  # whitespace, or the start of the tag: wait
                    self._state = "answer"
                    continue
                case "reasoning":
                    if not self._reasoning_started:
                        self._pending = self._pending.lstrip()
                    end = self._pending.find(THINK_CLOSE)
                    if end >= 0:
                        reasoning = self._pending[:end].rstrip()
                        self._pending = self._pending[end + len(THINK_CLOSE) :]
                        self._state = "answer_start"
                        if reasoning:
                            pieces.append(ReasoningPiece(reasoning))
                        continue
                    held = held_length(self._pending, THINK_CLOSE)
                    ready = self._pending[: len(self._pending) - held]
                    self._pending = self._pending[len(self._pending) - held :]
                    if ready:
                        self._reasoning_started = True
                        pieces.append(ReasoningPiece(ready))
                    return pieces
                case "answer_start":
                    self._pending = self._pending.lstrip()
                    if not self._pending:
                        return pieces
                    self._state = "answer"
                    continue
                case "answer":
                    pending, self._pending = self._pending, ""
                    if pending:
                        pieces.append(TextPiece(pending))
                    return pieces

    def finish(self) -> list[SplitPiece]:
        pending, self._pending = self._pending, ""
        match self._state:
            case "start" | "answer":
                return [TextPiece(pending)] if pending else []
            case "reasoning":
                reasoning = pending.rstrip()
                return [ReasoningPiece(reasoning)] if reasoning else []
            case "answer_start":
                return []
