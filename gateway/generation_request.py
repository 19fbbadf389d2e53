"""The one internal request every API dialect adapts to, and the text events it produces.

OpenAI chat and completions, Anthropic Messages, Ollama and OpenAI Responses each decode
their own JSON, build a `TextGenerationRequest` and hand it to `CompletionEngine.run`, which yields
`TextDelta`s and exactly one final `TextFinished`. Nothing in here knows about HTTP or a dialect.

The request errors that every dialect reports the same way live here too, so an adapter can raise
them without importing the engine: `InvalidRequestError` (the client's fault, HTTP 400) and
`ModelNotFoundError` (the model is not served, HTTP 404).
"""

import secrets
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.output_grammar import OutputGrammar
from gateway.token_logprobs import TokenLogprob
from gateway.tool_definitions import ChatTemplateOptions, ToolCall, ToolChoice, Tools
from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import SamplingOptions

MAX_SEED = 2**63 - 1
"""Seeds are kept in [0, 2**63 - 1] so they fit every wire format (int64 and uint64 alike)."""


SamplingKey = Literal["temperature", "top_p", "top_k"]
"""The sampling fields a model's generation_config.json may default."""


class InvalidRequestError(Exception):
    """The request cannot be served as asked; the client must change it.

    `param` names the offending request field in the dialect's terms (e.g. "max_tokens");
    `code` is a short machine-readable reason (e.g. "context_length_exceeded").
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ModelNotFoundError(Exception):
    """No model of that id is served by this cluster (unlike `ModelUnavailableError`: not ready yet)."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"The model '{model_id}' does not exist or is not served here.")
        self.model_id = model_id


class ChatMessage(BaseModel):
    """One turn of a conversation, already reduced to plain text by the dialect adapter.

    An assistant turn may carry the tool calls it made (and its earlier reasoning); a `tool` turn is
    the result of the call `tool_call_id`.
    """

    model_config = ConfigDict(frozen=True, strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    """The function a `tool` turn answers, where the dialect says (some templates show it)."""
    reasoning: str | None = None


class ChatPrompt(BaseModel):
    """A conversation, rendered with the model's chat template (generation prompt appended)."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["chat"] = "chat"
    messages: Annotated[tuple[ChatMessage, ...], Field(min_length=1)]
    tools: Tools = ()
    """Functions the model may call, rendered by the chat template (`tools=`)."""
    template_options: ChatTemplateOptions = ChatTemplateOptions()


class TextPrompt(BaseModel):
    """Raw text, tokenized as it is (the tokenizer's own special tokens, such as BOS, included)."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["text"] = "text"
    text: str


Prompt = Annotated[ChatPrompt | TextPrompt, Field(discriminator="kind")]


class TextGenerationRequest(BaseModel):
    """What to generate, independent of the API dialect that asked for it."""

    model_config = ConfigDict(frozen=True, strict=True)

    request_id: RequestId
    model_id: ModelId
    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=1)] | None
    """None: as many as the context window leaves after the prompt."""
    sampling: SamplingOptions
    omitted_sampling: frozenset[SamplingKey] = frozenset()
    """Sampling fields the client left out: the model's generation_config.json defaults replace them."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends before the first occurrence of any of them (not emitted)."""
    tool_choice: ToolChoice = "auto"
    """With the prompt's tools: `none` hides them from the model and parses no call."""
    grammar: OutputGrammar | None = None
    """Structured output: the text must match this grammar (`gateway/output_grammar.py`)."""

    @field_validator("stop")
    @classmethod
    def _stop_strings_are_not_empty(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text for text in stop):
            raise ValueError("stop strings must not be empty")
        return stop


class TextStarted(BaseModel):
    """Sent first, only when asked for (`CompletionEngine.run(..., announce_start=True)`): the prompt's size.

    Dialects whose stream opens with the input usage (Anthropic's `message_start`) need it before any text.
    """

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["started"] = "started"
    prompt_tokens: int


class TextDelta(BaseModel):
    """Newly generated text; never splits a UTF-8 character, never contains part of a stop string."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["delta"] = "delta"
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """When the request asked for logprobs: those of the tokens read since the last delta (the
    text may be empty when a token's text is held back, e.g. at the end)."""


class ReasoningDelta(BaseModel):
    """Newly generated text of the model's think block (chat prompts of reasoning models only)."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["reasoning"] = "reasoning"
    text: str


class ToolCallDelta(BaseModel):
    """One complete tool call parsed from the generated text; `index` counts the calls from 0."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["tool_call"] = "tool_call"
    index: int
    call: ToolCall


class TextFinished(BaseModel):
    """The last event of a generation: why it stopped, and the token usage."""

    model_config = ConfigDict(frozen=True, strict=True)

    kind: Literal["finished"] = "finished"
    reason: Literal["stop", "length", "tool_calls"]
    """`tool_calls`: the model ended its turn having called tools."""
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
    """The stop string that ended the text, when one did (some dialects report which)."""


TextEvent = TextStarted | TextDelta | ReasoningDelta | ToolCallDelta | TextFinished


def with_generation_defaults(
    sampling: SamplingOptions, omitted: frozenset[SamplingKey], defaults: Mapping[str, float | int]
) -> SamplingOptions:
    """`sampling` with each omitted field taken from the model's defaults; a default out of range is ignored."""
    updates: dict[str, float | int] = {key: defaults[key] for key in omitted if key in defaults}
    if "temperature" in updates:
        updates["temperature"] = float(updates["temperature"])
    if "top_p" in updates:
        updates["top_p"] = float(updates["top_p"])
    if "top_k" in updates:
        updates["top_k"] = int(updates["top_k"])
    valid = {
        key: value
        for key, value in updates.items()
        if (key == "temperature" and 0 <= value <= 2)
        or (key == "top_p" and 0 < value <= 1)
        or (key == "top_k" and value >= 0)
    }
    if not valid:
        return sampling
    # An omitted temperature already defaulted to 1 (> 0), so the request carries its seed.
    return sampling.model_copy(
        update={
            "temperature": float(valid.get("temperature", sampling.temperature)),
            "top_p": float(valid.get("top_p", sampling.top_p)),
            "top_k": int(valid.get("top_k", sampling.top_k)),
        }
    )


def sampling_options(
    *, temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int | None = None
) -> SamplingOptions:
    """Builds the sampling options of a request, choosing the seed here when the client gave none.

    A sampled request (temperature > 0) always travels with an explicit seed, so the gateway can
    replay it bit for bit after a failover. Greedy requests do not use the seed.
    """
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1) if temperature > 0 else 0
    return SamplingOptions(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
