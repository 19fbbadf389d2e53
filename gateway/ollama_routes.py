"""The Ollama dialect under `/api/`: `chat`, `generate`, `tags`, `show`, `ps`, `version`, and `HEAD /`.

`chat` and `generate` stream NDJSON by default (one JSON object a line, the last with `done: true`,
`done_reason` and the timing fields in nanoseconds), or answer one object with `stream: false`.
`options`: num_predict (-1, -2 or absent: up to the context window), temperature (default 0.8, as
Ollama), top_p, top_k, stop, seed, repeat_penalty + repeat_last_n, min_p, presence_penalty,
frequency_penalty (`with_ollama_penalties`); other options are ignored. `keep_alive` is accepted and ignored
(strata keeps its model loaded). `format` ("json" or a JSON schema) holds the output to it
(`gateway/response_formats.py`); images are refused with 400 for now.
`tools` (OpenAI's function tools), messages with `tool_calls` / `tool_name` / `thinking`, and `think`
(true/false or an effort) reach the chat template; replies carry `message.tool_calls` (arguments
as objects, a streamed line per call) and `message.thinking`.
Errors are `{"error": "..."}` (written by `gateway.errors` for every path under `/api/`).
"""

import json
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.completion_engine import CompletionEngine
from gateway.dialect_replies import (
    ClosingStreamingResponse,
    client_closed_reply,
    new_request_id,
    started_generation,
    whole_output,
)
from gateway.errors import describe_error
from gateway.generation_request import (
    ChatMessage,
    ChatPrompt,
    InvalidRequestError,
    ModelNotFoundError,
    ReasoningDelta,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextPrompt,
    TextStarted,
    ToolCallDelta,
    sampling_options,
)
from gateway.openai_routes import ModelCatalog
from gateway.openai_tools import ToolInputs
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body
from gateway.response_formats import OllamaFormat, ollama_format_grammar
from gateway.tool_definitions import ChatTemplateOptions, ToolCall
from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import DEFAULT_REPETITION_CONTEXT_SIZE, SamplingOptions

logger = logging.getLogger(__name__)

OLLAMA_API_VERSION = "0.6.3"
"""The Ollama version whose API this mirrors (the client the tests use)."""
OLLAMA_DEFAULT_TEMPERATURE = 0.8
UNBOUNDED_REPETITION_WINDOW = 2**31 - 1
"""`repeat_last_n: -1`: the repetition penalty looks back over the whole context."""


class Options(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    num_predict: int | None = None
    temperature: Annotated[float | None, Field(ge=0.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    stop: tuple[Annotated[str, Field(min_length=1)], ...] | None = None
    seed: Annotated[int | None, Field(ge=0, le=2**63 - 1)] = None
    repeat_penalty: Annotated[float | None, Field(gt=0.0, allow_inf_nan=False)] = None
    repeat_last_n: Annotated[int | None, Field(ge=-1)] = None
    min_p: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    presence_penalty: Annotated[float | None, Field(allow_inf_nan=False)] = None
    frequency_penalty: Annotated[float | None, Field(allow_inf_nan=False)] = None


def with_ollama_penalties(sampling: SamplingOptions, options: Options) -> SamplingOptions:
    """Ollama's `repeat_penalty` over `repeat_last_n` tokens (mlx-lm's repetition penalty; 0 turns it
    off, -1 looks back over the whole context), `min_p`, and the presence and frequency penalties
    with OpenAI's semantics (generated tokens only). Ollama's defaults are not applied: an option
    left out stays off."""
    window = options.repeat_last_n
    repetition = options.repeat_penalty or 0.0
    if window == 0:
        repetition = 0.0
    return sampling.model_copy(
        update={
            "repetition_penalty": repetition,
            "repetition_context_size": (
                DEFAULT_REPETITION_CONTEXT_SIZE
                if window is None
                else UNBOUNDED_REPETITION_WINDOW
                if window == -1
                else max(1, window)
            ),
            "min_p": options.min_p or 0.0,
            "presence_penalty": options.presence_penalty or 0.0,
            "frequency_penalty": options.frequency_penalty or 0.0,
        }
    )


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    name: str
    arguments: dict[str, object] = Field(default_factory=dict[str, object])


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: tuple[str, ...] | None = None
    thinking: str | None = None
    tool_calls: tuple[OllamaToolCall, ...] = ()
    tool_name: str | None = None

    def to_chat_message(self, position: int) -> ChatMessage:
        calls = tuple(
            ToolCall(id=f"call_{position}_{index}", name=call.function.name, arguments=call.function.arguments)
            for index, call in enumerate(self.tool_calls)
        )
        return ChatMessage(
            role=self.role,
            content=self.content,
            tool_calls=calls,
            tool_name=self.tool_name,
            reasoning=self.thinking,
        )


class _GenerationFields(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    stream: bool = True
    options: Options | None = None
    format: OllamaFormat = None
    keep_alive: str | int | float | None = None

    def generation_request(self, request_id: RequestId, prompt: ChatPrompt | TextPrompt) -> TextGenerationRequest:
        options = self.options or Options()
        if options.num_predict is not None and options.num_predict not in (-1, -2) and options.num_predict < 1:
            raise InvalidRequestError("num_predict must be positive, -1 or -2", param="options.num_predict")
        max_tokens = options.num_predict if options.num_predict is not None and options.num_predict > 0 else None
        temperature = OLLAMA_DEFAULT_TEMPERATURE if options.temperature is None else options.temperature
        sampling = with_ollama_penalties(
            sampling_options(
                temperature=temperature, top_p=options.top_p or 1.0, top_k=options.top_k or 0, seed=options.seed
            ),
            options,
        )
        return TextGenerationRequest(
            request_id=request_id,
            model_id=ModelId(self.model),
            prompt=prompt,
            max_tokens=max_tokens,
            sampling=sampling,
            stop=options.stop or (),
            grammar=ollama_format_grammar(self.format),
        )


class ChatRequest(_GenerationFields):
    messages: Annotated[tuple[OllamaMessage, ...], Field(min_length=1)]
    tools: ToolInputs = ()
    think: bool | Literal["low", "medium", "high"] | None = None

    def prompt(self) -> ChatPrompt:
        if any(message.images for message in self.messages):
            raise InvalidRequestError("images are not supported yet", param="messages.images")
        # Ollama's calls carry no ids: each gets one from its position (templates that show ids need some).
        return ChatPrompt(
            messages=tuple(message.to_chat_message(position) for position, message in enumerate(self.messages)),
            tools=tuple(tool.to_definition() for tool in self.tools),
            template_options=_thinking_options(self.think),
        )


def _thinking_options(think: bool | Literal["low", "medium", "high"] | None) -> ChatTemplateOptions:
    if think is None:
        return ChatTemplateOptions()
    if isinstance(think, bool):
        return ChatTemplateOptions(enable_thinking=think)
    return ChatTemplateOptions(enable_thinking=True, reasoning_effort=think)


class GenerateRequest(_GenerationFields):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: tuple[str, ...] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None

    def to_prompt(self) -> ChatPrompt | TextPrompt:
        if self.images:
            raise InvalidRequestError("images are not supported yet", param="images")
        if self.raw:
            return TextPrompt(text=self.prompt)
        system = (ChatMessage(role="system", content=self.system),) if self.system else ()
        return ChatPrompt(
            messages=(*system, ChatMessage(role="user", content=self.prompt)),
            template_options=_thinking_options(self.think),
        )


class ModelRequest(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _model_entry(model_id: str) -> dict[str, object]:
    details: dict[str, object] = {
        "format": "mlx",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": "",
    }
    return {"name": model_id, "model": model_id, "modified_at": _now(), "size": 0, "digest": "", "details": details}


class _Timing:
    """Ollama's durations in nanoseconds: prompt evaluation until the first token, then evaluation."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()
        self.first_token: int | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic_ns()

    def final_fields(self, finished: TextFinished) -> dict[str, object]:
        now = time.monotonic_ns()
        first = self.first_token if self.first_token is not None else now
        reason = "length" if finished.reason == "length" else "stop"
        return {
            "done": True,
            "done_reason": reason,
            "total_duration": now - self.started,
            "load_duration": 0,
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": first - self.started,
            "eval_count": finished.completion_tokens,
            "eval_duration": now - first,
        }


def ollama_router(
    engine: CompletionEngine, catalog: ModelCatalog, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> APIRouter:
    router = APIRouter()

    @router.head("/")
    async def running() -> Response:
        return Response(media_type="text/plain")

    @router.get("/api/version")
    async def version() -> Response:
        return _json({"version": OLLAMA_API_VERSION})

    @router.get("/api/tags")
    async def tags() -> Response:
        return _json({"models": [_model_entry(model_id) for model_id in catalog.served_models()]})

    @router.get("/api/ps")
    async def running_models() -> Response:
        ready = [model_id for model_id in catalog.served_models() if catalog.is_ready(model_id)]
        return _json({"models": [{**_model_entry(model_id), "expires_at": None, "size_vram": 0} for model_id in ready]})

    @router.post("/api/show")
    async def show(request: Request) -> Response:
        body = await decode_json_body(request, ModelRequest, max_body_bytes)
        if body.model not in catalog.served_models():
            raise ModelNotFoundError(body.model)
        details = _model_entry(body.model)["details"]
        return _json({"modelfile": "", "parameters": "", "template": "", "details": details, "model_info": {}})

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        body = await decode_json_body(request, ChatRequest, max_body_bytes)
        request_id = new_request_id("ollama-chat")
        generation = body.generation_request(request_id, body.prompt())
        return await _reply(request, engine, generation, body.model, body.stream, chat=True)

    @router.post("/api/generate")
    async def generate(request: Request) -> Response:
        body = await decode_json_body(request, GenerateRequest, max_body_bytes)
        request_id = new_request_id("ollama-generate")
        if not body.prompt and not body.system:  # Ollama's "load the model" call
            if body.model not in catalog.served_models():
                raise ModelNotFoundError(body.model)
            return _json(
                {"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
            )
        generation = body.generation_request(request_id, body.to_prompt())
        return await _reply(request, engine, generation, body.model, body.stream, chat=False)

    return router


def _json(document: dict[str, object]) -> Response:
    return Response(json.dumps(document, ensure_ascii=False), media_type="application/json")


def _text_fields(
    text: str, chat: bool, *, thinking: str = "", tool_calls: tuple[ToolCall, ...] = ()
) -> dict[str, object]:
    if not chat:
        return {"response": text, **({"thinking": thinking} if thinking else {})}
    message: dict[str, object] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = [
            {"function": {"index": index, "name": call.name, "arguments": call.arguments}}
            for index, call in enumerate(tool_calls)
        ]
    return {"message": message}


async def _reply(
    request: Request, engine: CompletionEngine, generation: TextGenerationRequest, model: str, stream: bool, chat: bool
) -> Response:
    timing = _Timing()
    request_id = generation.request_id
    if stream:
        events = await started_generation(request, engine, generation)
        if events is None:
            return client_closed_reply()
        lines = _lines(events, model, chat, timing, request_id)
        return ClosingStreamingResponse(lines, media_type="application/x-ndjson", headers={})
    outcome = await whole_output(request, engine, generation)
    if outcome is None:
        return client_closed_reply()
    timing.token()
    fields = _text_fields(outcome.text, chat, thinking=outcome.reasoning, tool_calls=outcome.tool_calls)
    document = {"model": model, "created_at": _now(), **fields, **timing.final_fields(outcome.finished)}
    return _json(document)


async def _lines(
    events: AsyncGenerator[TextEvent], model: str, chat: bool, timing: _Timing, request_id: RequestId
) -> AsyncGenerator[str]:
    def line(document: dict[str, object]) -> str:
        return json.dumps({"model": model, "created_at": _now(), **document}, ensure_ascii=False) + "\n"

    async with aclosing(events):
        try:
            async for event in events:
                match event:
                    case TextDelta(text=text):
                        timing.token()
                        yield line({**_text_fields(text, chat), "done": False})
                    case ReasoningDelta(text=text):
                        timing.token()
                        yield line({**_text_fields("", chat, thinking=text), "done": False})
                    case ToolCallDelta(call=call):
                        yield line({**_text_fields("", chat, tool_calls=(call,)), "done": False})
                    case TextFinished():
                        yield line({**_text_fields("", chat), **timing.final_fields(event)})
                    case TextStarted():
                        pass
        except Exception as error:  # the status line is gone: report in-band, as Ollama does
            description = describe_error(error)
            log = logger.exception if description.status >= 500 else logger.info
            log("request %s: stream failed after it started (status %d)", request_id, description.status)
            yield json.dumps({"error": description.body.error.message}) + "\n"
