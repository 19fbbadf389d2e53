"""A whole generation collected from the engine's events: answer text, reasoning, tool calls, finish.

Every dialect's non-streaming reply is written from one `CollectedOutput` (`collect_output`).
"""

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from gateway.generation_request import ReasoningDelta, TextDelta, TextEvent, TextFinished, TextStarted, ToolCallDelta
from gateway.tool_definitions import ToolCall


@dataclass(frozen=True)
class CollectedOutput:
    text: str
    reasoning: str
    """The think block's text; "" when the model wrote none."""
    tool_calls: tuple[ToolCall, ...]
    finished: TextFinished


async def collect_output(events: AsyncGenerator[TextEvent]) -> CollectedOutput:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text):
                    texts.append(text)
                case ReasoningDelta(text=text):
                    reasoning.append(text)
                case ToolCallDelta(call=call):
                    calls.append(call)
                case TextFinished():
                    return CollectedOutput("".join(texts), "".join(reasoning), tuple(calls), event)
                case TextStarted():
                    pass
    raise RuntimeError("the generation ended without a TextFinished event")
