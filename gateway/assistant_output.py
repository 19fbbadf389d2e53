"""The generated text of a chat turn split into reasoning, answer text and tool calls, as it streams.

`AssistantOutputSplitter` chains the two pure splitters: the think block first
(`gateway.reasoning_split`, when the model reasons), then tool-call markup in what follows
(`gateway.tool_call_parsing`, when the request offered tools). `OutputSyntax` says which apply; it is
decided once per request from the chat template and the rendered prompt (`output_syntax`).
`OutputEvents` turns the pieces into the engine's events (`TextDelta`, `ReasoningDelta`,
`ToolCallDelta` with a fresh call id each).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.generation_request import ReasoningDelta, TextDelta, TextEvent, ToolCallDelta
from gateway.harmony_parsing import HarmonyParser
from gateway.output_pieces import CallPiece, OutputPiece, ReasoningPiece, TextPiece
from gateway.reasoning_split import THINK_OPEN, ReasoningSplitter, prompt_opens_reasoning
from gateway.token_logprobs import TokenLogprob
from gateway.tool_call_parsing import HARMONY_CHANNEL, ToolCallFormat, ToolCallParser, tool_call_parser
from gateway.tool_definitions import ToolCall, new_tool_call_id


@dataclass(frozen=True)
class OutputSyntax:
    reasoning: bool
    """The model may write a think block."""
    starts_in_reasoning: bool
    """The prompt opened the think block: the reply starts inside it."""
    tool_calls: ToolCallFormat | None
    """The call format to parse; None: tools were not offered (all text is the answer)."""
    harmony: bool = False
    """gpt-oss's channels: decoded with special tokens kept and split by `gateway.harmony_parsing`."""

    @property
    def is_plain(self) -> bool:
        return not self.reasoning and self.tool_calls is None and not self.harmony


PLAIN_SYNTAX = OutputSyntax(reasoning=False, starts_in_reasoning=False, tool_calls=None)


def output_syntax(chat_template: str, rendered_prompt: str, tool_calls: ToolCallFormat | None) -> OutputSyntax:
    if HARMONY_CHANNEL in chat_template:
        return OutputSyntax(reasoning=True, starts_in_reasoning=False, tool_calls=tool_calls, harmony=True)
    opens = prompt_opens_reasoning(rendered_prompt)
    return OutputSyntax(
        reasoning=opens or THINK_OPEN in chat_template, starts_in_reasoning=opens, tool_calls=tool_calls
    )


class AssistantOutputSplitter:
    def __init__(self, syntax: OutputSyntax) -> None:
        self._harmony = HarmonyParser() if syntax.harmony else None
        self._reasoning = (
            ReasoningSplitter(starts_in_reasoning=syntax.starts_in_reasoning)
            if syntax.reasoning and not syntax.harmony
            else None
        )
        self._tool_calls: ToolCallParser | None = (
            tool_call_parser(syntax.tool_calls) if syntax.tool_calls is not None and not syntax.harmony else None
        )

    def feed(self, text: str) -> list[OutputPiece]:
        if self._harmony is not None:
            return _merge_text(self._harmony.feed(text))
        pieces: list[OutputPiece] = list(self._reasoning.feed(text)) if self._reasoning else [TextPiece(text)]
        return self._parse_calls(pieces)

    def finish(self) -> list[OutputPiece]:
        if self._harmony is not None:
            return _merge_text(self._harmony.finish())
        pieces: list[OutputPiece] = list(self._reasoning.finish()) if self._reasoning else []
        parsed = self._parse_calls(pieces)
        if self._tool_calls is not None:
            parsed.extend(self._tool_calls.finish())
        return _merge_text(parsed)

    def _parse_calls(self, pieces: list[OutputPiece]) -> list[OutputPiece]:
        if self._tool_calls is None:
            return [piece for piece in pieces if not (isinstance(piece, TextPiece) and not piece.text)]
        parsed: list[OutputPiece] = []
        for piece in pieces:
            match piece:
                case TextPiece(text=text):
                    parsed.extend(self._tool_calls.feed(text))
                case ReasoningPiece() | CallPiece():
                    parsed.append(piece)
        return _merge_text(parsed)


def _merge_text(pieces: list[OutputPiece]) -> list[OutputPiece]:
    """Adjacent pieces of one kind of text joined, empty ones dropped (fewer, larger deltas)."""
    merged: list[OutputPiece] = []
    for piece in pieces:
        if isinstance(piece, TextPiece | ReasoningPiece) and not piece.text:
            continue
        previous = merged[-1] if merged else None
        if isinstance(piece, TextPiece) and isinstance(previous, TextPiece):
            merged[-1] = TextPiece(previous.text + piece.text)
        elif isinstance(piece, ReasoningPiece) and isinstance(previous, ReasoningPiece):
            merged[-1] = ReasoningPiece(previous.text + piece.text)
        else:
            merged.append(piece)
    return merged


class OutputEvents:
    """The engine's events for one generation's text: passed through as it is for plain syntax."""

    def __init__(self, syntax: OutputSyntax) -> None:
        self._splitter = None if syntax.is_plain else AssistantOutputSplitter(syntax)
        self.tool_calls = 0
        """Calls parsed so far."""
        self._pending_logprobs: list[TokenLogprob] = []
        """Logprobs of tokens read but not yet given to a text delta (their text was held back, or
        went to reasoning or a call: they ride on the next text delta, or the last event)."""

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> list[TextEvent]:
        self._pending_logprobs.extend(logprobs)
        if self._splitter is None:
            return self._with_logprobs([TextDelta(text=text)] if text else [])
        return self._with_logprobs(self._events(self._splitter.feed(text)))

    def finish(self) -> list[TextEvent]:
        events = self._events(self._splitter.finish()) if self._splitter is not None else []
        events = self._with_logprobs(events)
        if self._pending_logprobs:
            events.append(TextDelta(text="", logprobs=tuple(self._pending_logprobs)))
            self._pending_logprobs.clear()
        return events

    def _with_logprobs(self, events: list[TextEvent]) -> list[TextEvent]:
        """The pending logprobs on the first text delta of `events` (if any)."""
        if not self._pending_logprobs:
            return events
        for index, event in enumerate(events):
            if isinstance(event, TextDelta):
                events[index] = TextDelta(text=event.text, logprobs=tuple(self._pending_logprobs))
                self._pending_logprobs.clear()
                break
        return events

    def _events(self, pieces: list[OutputPiece]) -> list[TextEvent]:
        events: list[TextEvent] = []
        for piece in pieces:
            match piece:
                case TextPiece(text=text):
                    events.append(TextDelta(text=text))
                case ReasoningPiece(text=text):
                    events.append(ReasoningDelta(text=text))
                case CallPiece(name=name, arguments=arguments):
                    call = ToolCall(id=new_tool_call_id(), name=name, arguments=arguments)
                    events.append(ToolCallDelta(index=self.tool_calls, call=call))
                    self.tool_calls += 1
        return events
