"""The OpenAI dialect's JSON: request schemas, their translation to `TextGenerationRequest`, replies.

Requests are validated strictly (no "1" for 1, no true for 1) in pydantic's JSON mode; fields this
gateway does not know are ignored, as OpenAI-compatible servers usually do. What is supported:
- chat: `messages` with roles system/developer/user/assistant and string content or a list of
  `{"type": "text", "text": ...}` parts (joined with newlines); other part types are refused.
- both: `max_tokens` (chat also `max_completion_tokens`, which wins), `temperature` in [0, 2]
  (default 1, as OpenAI), `top_p` in (0, 1], `top_k` and `min_p` (extensions), `seed` in
  [0, 2**63 - 1], `stop` (one string or up to 4), `n` (1 to `MAX_CHOICES`), `stream`,
  `stream_options.include_usage`, `user` (accepted); the logits options (`openai_sampling.py`):
  `logit_bias`, `presence_penalty`, `frequency_penalty`, `repetition_penalty` (an extension);
  chat `logprobs` + `top_logprobs` (0-20), completions `logprobs` (0-20);
  `response_format` (`text`, `json_object`, `json_schema`: `gateway/response_formats.py`).
- completions: `prompt` as a string (or a list of exactly one string); `max_tokens` defaults to 16
  as in OpenAI's API, while chat leaves it to the context window.

Replies are built by `ChatEncoder` and `CompletionEncoder`, which share one interface so the
routes stream and collect both the same way.
"""

import time
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.collected_output import CollectedOutput
from gateway.generation_request import (
    MAX_SEED,
    ChatMessage,
    ChatPrompt,
    ReasoningDelta,
    SamplingKey,
    TextFinished,
    TextGenerationRequest,
    TextPrompt,
    ToolCallDelta,
    sampling_options,
)
from gateway.openai_logprobs import ChatChoiceLogprobs, CompletionChoiceLogprobs
from gateway.openai_sampling import (
    MAX_CHOICES,
    LogitBias,
    MinP,
    Penalty,
    RepetitionPenalty,
    TopLogprobs,
    with_logits_options,
)
from gateway.openai_tools import (
    TemplateKeywords,
    ToolCallInput,
    ToolCallReply,
    ToolChoiceInput,
    ToolInputs,
    template_options,
    tool_call_delta,
    tool_choice,
)
from gateway.response_formats import ResponseFormat
from gateway.tool_definitions import ReasoningEffort
from services.kernel.ids import ModelId, RequestId

MAX_STOP_STRINGS = 4
MAX_STOP_STRING_LENGTH = 1024
"""Long enough for any real stop sequence; keeps matching cheap on every token."""
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

FinishReason = Literal["stop", "length", "tool_calls"]


def _join_text_parts(value: object) -> object:
    """Content may be a list of text parts; reduce it to the one string the model sees."""
    if not isinstance(value, list):
        return value
    texts: list[str] = []
    for part in cast(list[object], value):
        fields = _object_fields(part)
        text = fields.get("text") if fields is not None else None
        if fields is None or fields.get("type") != "text" or not isinstance(text, str):
            described = f"a part of type {fields.get('type')!r}" if fields is not None else "a non-object"
            raise PydanticCustomError(
                "unsupported_content_part",
                "only text content parts ({'type': 'text', 'text': ...}) are supported, got {part}",
                {"part": described},
            )
        texts.append(text)
    return "\n".join(texts)


def _object_fields(value: object) -> dict[str, object] | None:
    return cast(dict[str, object], value) if isinstance(value, dict) else None


def _stop_strings_as_tuple(value: object) -> object:
    """One string or a list of them; a tuple either way (a validator's output is strict Python)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(cast(list[object], value))
    return value


def _one_prompt(value: object) -> object:
    if not isinstance(value, list):
        return value
    items = cast(list[object], value)
    if any(isinstance(item, int | list) for item in items):
        raise PydanticCustomError("unsupported_prompt", "prompts of token ids are not supported; send text")
    if len(items) != 1:
        raise PydanticCustomError("one_prompt_only", "only one prompt per request is supported")
    return items[0]


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_LENGTH)]
StopStrings = Annotated[
    tuple[StopString, ...] | None, BeforeValidator(_stop_strings_as_tuple), Field(max_length=MAX_STOP_STRINGS)
]
Temperature = Annotated[float | None, Field(ge=0.0, le=2.0)]
TopP = Annotated[float | None, Field(gt=0.0, le=1.0)]
TopK = Annotated[int | None, Field(ge=0)]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED)]
MaxTokens = Annotated[int | None, Field(ge=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    include_usage: bool = False


class _SamplingFields(BaseModel):
    """The options chat and completions share."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    max_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    seed: Seed = None
    stop: StopStrings = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    min_p: MinP = None
    logit_bias: LogitBias = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    repetition_penalty: RepetitionPenalty = None
    user: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("n")
    @classmethod
    def _choices_within_limit(cls, n: int | None) -> int | None:
        if n is not None and not 1 <= n <= MAX_CHOICES:
            raise PydanticCustomError("invalid_n", "n must lie in [1, {limit}]", {"limit": MAX_CHOICES})
        return n

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _omitted_sampling(self) -> frozenset[SamplingKey]:
        given: tuple[tuple[SamplingKey, float | int | None], ...] = (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("top_k", self.top_k),
        )
        return frozenset(key for key, value in given if value is None)

    def _top_logprobs(self) -> int | None:
        """How many alternatives to report per token; None: no logprobs (each endpoint says)."""
        return None

    def _generation_request(
        self, request_id: RequestId, prompt: ChatPrompt | TextPrompt, max_tokens: int | None
    ) -> TextGenerationRequest:
        temperature = 1.0 if self.temperature is None else self.temperature
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=prompt,
            max_tokens=max_tokens,
            sampling=with_logits_options(
                sampling_options(
                    temperature=temperature,
                    top_p=1.0 if self.top_p is None else self.top_p,
                    top_k=self.top_k or 0,
                    seed=self.seed,
                ),
                self,
                self._top_logprobs(),
            ),
            stop=self.stop or (),
            omitted_sampling=self._omitted_sampling(),
            grammar=self.response_format.grammar("response_format") if self.response_format is not None else None,
        )


class ChatMessageInput(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, BeforeValidator(_join_text_parts)] | None = None
    tool_calls: tuple[ToolCallInput, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_unless_calls(self) -> "ChatMessageInput":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise PydanticCustomError("missing_content", "content is required unless an assistant turn has tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError("missing_tool_call_id", "a tool message needs the tool_call_id it answers")
        return self

    def to_chat_message(self) -> ChatMessage:
        return ChatMessage(
            role="system" if self.role == "developer" else self.role,
            content=self.content or "",
            tool_calls=tuple(call.to_tool_call() for call in self.tool_calls),
            tool_call_id=self.tool_call_id,
            tool_name=self.name if self.role == "tool" else None,
            reasoning=self.reasoning_content,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[tuple[ChatMessageInput, ...], Field(min_length=1)]
    max_completion_tokens: MaxTokens = None
    logprobs: bool = False
    top_logprobs: TopLogprobs = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError("invalid_top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def _top_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    tools: ToolInputs = ()
    tool_choice: ToolChoiceInput | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: TemplateKeywords | None = None

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        prompt = ChatPrompt(
            messages=tuple(message.to_chat_message() for message in self.messages),
            tools=tuple(tool.to_definition() for tool in self.tools),
            template_options=template_options(self.reasoning_effort, self.chat_template_kwargs),
        )
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        generation = self._generation_request(request_id, prompt, max_tokens)
        return generation.model_copy(update={"tool_choice": tool_choice(self.tool_choice)})


class CompletionRequest(_SamplingFields):
    prompt: Annotated[str, BeforeValidator(_one_prompt)]
    max_tokens: MaxTokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    logprobs: TopLogprobs = None
    """The legacy shape: how many alternatives per token (0 for the token's own logprob only)."""

    def _top_logprobs(self) -> int | None:
        return self.logprobs

    def to_generation_request(self, request_id: RequestId) -> TextGenerationRequest:
        return self._generation_request(request_id, TextPrompt(text=self.prompt), self.max_tokens)


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class Usage(_Reply):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, finished: TextFinished) -> "Usage":
        return cls(
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            total_tokens=finished.prompt_tokens + finished.completion_tokens,
        )


class AssistantMessage(_Reply):
    role: Literal["assistant"] = "assistant"
    content: str | None
    """None when the turn is only tool calls, as OpenAI sends it."""
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCallReply, ...] | None = None

    @model_serializer(mode="wrap")
    def _without_absent_extras(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """`reasoning_content` and `tool_calls` appear only when there are some, as OpenAI writes them."""
        message: dict[str, object] = handler(self)
        return {key: value for key, value in message.items() if value is not None or key == "content"}


class ChatCompletionChoice(_Reply):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletion(_Reply):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: tuple[ChatCompletionChoice, ...]
    usage: Usage
    system_fingerprint: None = None


class ChatCompletionChunkChoice(_Reply):
    index: int = 0
    delta: dict[str, object]
    """`{"role": "assistant", "content": ""}` first, then `{"content": ...}` (or `reasoning_content`,
    `tool_calls`), `{}` with the finish."""
    finish_reason: FinishReason | None = None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionChunk(_Reply):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: tuple[ChatCompletionChunkChoice, ...]
    usage: Usage | None = None
    system_fingerprint: None = None


class CompletionChoice(_Reply):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionChoiceLogprobs | None = None


class Completion(_Reply):
    """Both the whole reply and each streamed chunk of the completions endpoint."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: tuple[CompletionChoice, ...]
    usage: Usage | None = None
    system_fingerprint: None = None


class ModelCard(_Reply):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "strata"


class ModelList(_Reply):
    object: Literal["list"] = "list"
    data: tuple[ModelCard, ...]


class ReplyEncoder(Protocol):
    """How one endpoint writes its whole reply and its stream chunks."""

    def opening(self) -> BaseModel | None:
        """The chunk sent before any text, if the dialect has one."""
        ...

    def delta(self, text: str) -> BaseModel: ...

    def side_delta(self, event: ReasoningDelta | ToolCallDelta) -> BaseModel | None:
        """The chunk of a reasoning delta or tool call, where the endpoint has them."""
        ...

    def finish(self, reason: FinishReason) -> BaseModel: ...

    def usage(self, finished: TextFinished) -> BaseModel: ...

    def whole(self, output: CollectedOutput) -> BaseModel: ...


@dataclass(frozen=True)
class ChatEncoder:
    id: str
    model: str
    created: int

    def opening(self) -> ChatCompletionChunk:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> ChatCompletionChunk:
        return self._chunk({"content": text})

    def side_delta(self, event: ReasoningDelta | ToolCallDelta) -> ChatCompletionChunk:
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text})
        return self._chunk(tool_call_delta(event))

    def finish(self, reason: FinishReason) -> ChatCompletionChunk:
        return self._chunk({}, reason)

    def usage(self, finished: TextFinished) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=(), usage=Usage.of(finished)
        )

    def whole(self, output: CollectedOutput) -> ChatCompletion:
        calls = tuple(ToolCallReply.of(call) for call in output.tool_calls) or None
        message = AssistantMessage(
            content=None if calls and not output.text else output.text,
            reasoning_content=output.reasoning or None,
            tool_calls=calls,
        )
        finished = output.finished
        choice = ChatCompletionChoice(message=message, finish_reason=finished.reason)
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=(choice,), usage=Usage.of(finished)
        )

    def _chunk(self, delta: dict[str, object], reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChatCompletionChunkChoice(delta=delta, finish_reason=reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=(choice,))


@dataclass(frozen=True)
class CompletionEncoder:
    id: str
    model: str
    created: int

    def opening(self) -> None:
        return None

    def delta(self, text: str) -> Completion:
        return self._completion(CompletionChoice(text=text))

    def side_delta(self, event: ReasoningDelta | ToolCallDelta) -> None:
        return None  # a text prompt is never split: these do not occur

    def finish(self, reason: FinishReason) -> Completion:
        return self._completion(CompletionChoice(text="", finish_reason=reason))

    def usage(self, finished: TextFinished) -> Completion:
        usage = Usage.of(finished)
        return Completion(id=self.id, created=self.created, model=self.model, choices=(), usage=usage)

    def whole(self, output: CollectedOutput) -> Completion:
        choice = CompletionChoice(text=output.text, finish_reason=output.finished.reason)
        return self._completion(choice, Usage.of(output.finished))

    def _completion(self, choice: CompletionChoice, usage: Usage | None = None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=(choice,), usage=usage)


def unix_time() -> int:
    return int(time.time())
