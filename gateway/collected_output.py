"""A whole generation collected from the engine's events: answer text, reasoning, tool calls, finish.

Every dialect's non-streaming reply is written from one `CollectedOutput` (`collect_output`).
"""

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from gateway.generation_request import ReasoningDelta, TextDelta, TextEvent, TextFinished, TextStarted, ToolCallDelta
from gateway.token_logprobs import TokenLogprob
from gateway.tool_definitions import ToolCall


@dataclass(frozen=True)
class CollectedOutput:
    text: str
    reasoning: str
    """The think block's text; "" when the model wrote none."""
    tool_calls: tuple[ToolCall, ...]
    finished: TextFinished
    logprobs: tuple[TokenLogprob, ...] = ()
    """When the request asked for logprobs: those of the answer's tokens, in order."""


async def collect_output(events: AsyncGenerator[TextEvent]) -> CollectedOutput:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprob] = []
    async with aclosing(events):
        async for event in events:
            match event:
                case TextDelta(text=text, logprobs=token_logprobs):
                    texts.append(text)
                    logprobs.extend(token_logprobs)
                case ReasoningDelta(text=text):
                    reasoning.append(text)
                case ToolCallDelta(call=call):
                    calls.append(call)
                case TextFinished():
                    return CollectedOutput("".join(texts), "".join(reasoning), tuple(calls), event, tuple(logprobs))
                case TextStarted():
                    pass
    raise RuntimeError("the generation ended without a TextFinished event")
