"""CompletionEngine over a scripted token source and the real tiny tokenizer."""

from pathlib import Path

import pytest

from gateway.completion_engine import CompletionEngine
from gateway.generation_request import (
    ChatMessage,
    ChatPrompt,
    InvalidRequestError,
    ModelNotFoundError,
    TextDelta,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextPrompt,
)
from gateway.token_source import ModelUnavailableError, PipelineError
from gateway.tokenization import REPLACEMENT_CHARACTER, ModelTokenizer
from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import SamplingOptions
from tests.gateway.fakes import MODEL, REPLY_TEXT, ScriptedTokenSource, StaticTokenizers, scripted_source
from tests.gateway.tiny_tokenizer import build_model_directory

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


def chat_request(
    content: str = "Say hello.", *, max_tokens: int | None = None, stop: tuple[str, ...] = (), model: str = MODEL
) -> TextGenerationRequest:
    return TextGenerationRequest(
        request_id=RequestId("chatcmpl-test"),
        model_id=ModelId(model),
        prompt=ChatPrompt(messages=(ChatMessage(role="user", content=content),)),
        max_tokens=max_tokens,
        sampling=SamplingOptions(temperature=0.7, seed=42),
        stop=stop,
    )


def text_request(text: str, *, max_tokens: int | None = None) -> TextGenerationRequest:
    return TextGenerationRequest(
        request_id=RequestId("cmpl-test"),
        model_id=MODEL,
        prompt=TextPrompt(text=text),
        max_tokens=max_tokens,
        sampling=SamplingOptions(),
    )


def engine_over(source: ScriptedTokenSource, tokenizer: ModelTokenizer) -> CompletionEngine:
    return CompletionEngine(source, StaticTokenizers({MODEL: tokenizer}))


async def collect(engine: CompletionEngine, request: TextGenerationRequest) -> tuple[list[str], TextFinished]:
    deltas: list[str] = []
    events: list[TextEvent] = [event async for event in engine.run(request)]
    for event in events[:-1]:
        assert isinstance(event, TextDelta)
        deltas.append(event.text)
    finished = events[-1]
    assert isinstance(finished, TextFinished)
    return deltas, finished


async def test_generates_the_whole_reply_and_reports_usage(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    deltas, finished = await collect(engine_over(source, model_tokenizer), chat_request())
    assert "".join(deltas) == REPLY_TEXT
    assert all(delta and REPLACEMENT_CHARACTER not in delta for delta in deltas)
    prompt_tokens = model_tokenizer.encode_chat([ChatMessage(role="user", content="Say hello.")])
    assert finished == TextFinished(
        reason="stop", prompt_tokens=len(prompt_tokens), completion_tokens=len(source.reply_tokens) + 1
    )
    [sent] = source.requests
    assert sent.prompt_tokens == tuple(prompt_tokens)
    assert sent.stop_token_ids == model_tokenizer.stop_token_ids
    assert sent.sampling == SamplingOptions(temperature=0.7, seed=42)
    assert sent.max_tokens == model_tokenizer.context_length - len(prompt_tokens)  # None: the rest of the window
    assert source.completed == [sent.request_id]


async def test_max_tokens_ends_with_length(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    deltas, finished = await collect(engine_over(source, model_tokenizer), chat_request(max_tokens=3))
    assert "".join(deltas) == model_tokenizer.decode(source.reply_tokens[:3])
    assert (finished.reason, finished.completion_tokens) == ("length", 3)


async def test_stop_string_cuts_the_text_and_cancels_upstream(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    deltas, finished = await collect(engine_over(source, model_tokenizer), chat_request(stop=("brown", "zzz")))
    assert "".join(deltas) == "Hello world! 日本語 😀🎉 The quick "
    assert finished.reason == "stop"
    assert finished.completion_tokens < len(source.reply_tokens)
    assert source.cancelled == [RequestId("chatcmpl-test")]


async def test_stop_string_made_of_multi_byte_characters(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    deltas, finished = await collect(engine_over(source, model_tokenizer), chat_request(stop=("😀🎉",)))
    assert ("".join(deltas), finished.reason) == ("Hello world! 日本語 ", "stop")


async def test_closing_the_stream_early_cancels_upstream(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    events = engine_over(source, model_tokenizer).run(chat_request())
    first = await anext(events)
    assert isinstance(first, TextDelta)
    await events.aclose()
    assert source.cancelled == [RequestId("chatcmpl-test")]


async def test_prompt_longer_than_the_context_is_refused(tmp_path: Path) -> None:
    tokenizer = ModelTokenizer.from_directory(build_model_directory(tmp_path, context_length=16))
    source = scripted_source(tokenizer)
    with pytest.raises(InvalidRequestError) as raised:
        await collect(engine_over(source, tokenizer), chat_request("word " * 40))
    assert (raised.value.param, raised.value.code) == ("messages", "context_length_exceeded")
    with pytest.raises(InvalidRequestError) as raised:
        await collect(engine_over(source, tokenizer), text_request("word " * 40))
    assert raised.value.param == "prompt"
    assert source.requests == []


async def test_max_tokens_beyond_the_remaining_context_is_refused(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer), model_tokenizer)
    with pytest.raises(InvalidRequestError) as raised:
        await collect(engine, chat_request(max_tokens=model_tokenizer.context_length))
    assert (raised.value.param, raised.value.code) == ("max_tokens", "context_length_exceeded")


async def test_empty_text_prompt_is_refused(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer), model_tokenizer)
    with pytest.raises(InvalidRequestError) as raised:
        await collect(engine, text_request(""))
    assert (raised.value.param, raised.value.code) == ("prompt", "empty_prompt")


async def test_text_prompt_generates(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    deltas, finished = await collect(engine_over(source, model_tokenizer), text_request("Once upon", max_tokens=4))
    assert source.requests[0].prompt_tokens == tuple(model_tokenizer.encode_text("Once upon"))
    assert ("".join(deltas), finished.reason) == (model_tokenizer.decode(source.reply_tokens[:4]), "length")


async def test_model_without_chat_template_refuses_chat(tmp_path: Path) -> None:
    tokenizer = ModelTokenizer.from_directory(build_model_directory(tmp_path, chat_template=None))
    with pytest.raises(InvalidRequestError) as raised:
        await collect(engine_over(scripted_source(tokenizer), tokenizer), chat_request())
    assert raised.value.param == "messages"


async def test_unknown_model(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer), model_tokenizer)
    with pytest.raises(ModelNotFoundError):
        await engine.start(chat_request(model="no-such-model"))


async def test_start_raises_unavailable_before_any_output(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer, unavailable=True), model_tokenizer)
    with pytest.raises(ModelUnavailableError):
        await engine.start(chat_request())


async def test_start_returns_the_full_stream(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer), model_tokenizer)
    events = await engine.start(chat_request())
    texts = [event.text async for event in events if isinstance(event, TextDelta)]
    assert "".join(texts) == REPLY_TEXT


async def test_pipeline_failure_mid_stream_propagates(model_tokenizer: ModelTokenizer) -> None:
    engine = engine_over(scripted_source(model_tokenizer, fail_after_tokens=4), model_tokenizer)
    received: list[str] = []
    with pytest.raises(PipelineError):
        async for event in engine.run(chat_request()):
            if isinstance(event, TextDelta):
                received.append(event.text)
    assert "".join(received) == "Hello world!"


async def test_generation_config_defaults_replace_only_omitted_sampling_fields(tmp_path: Path) -> None:
    directory = build_model_directory(tmp_path)
    (directory / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.9, "top_k": 20}')
    tokenizer = ModelTokenizer.from_directory(directory)
    source = scripted_source(tokenizer)
    engine = engine_over(source, tokenizer)
    base = chat_request()
    request = base.model_copy(update={"omitted_sampling": frozenset({"temperature", "top_k"})})
    await collect(engine, request)
    sent = source.requests[-1].sampling
    assert (sent.temperature, sent.top_p, sent.top_k, sent.seed) == (0.6, base.sampling.top_p, 20, 42)
    await collect(engine, base)
    assert source.requests[-1].sampling == base.sampling


async def test_out_of_range_defaults_are_ignored(tmp_path: Path) -> None:
    directory = build_model_directory(tmp_path)
    (directory / "generation_config.json").write_text('{"temperature": 9, "top_p": 0}')
    tokenizer = ModelTokenizer.from_directory(directory)
    source = scripted_source(tokenizer)
    base = chat_request()
    await collect(
        engine_over(source, tokenizer),
        base.model_copy(update={"omitted_sampling": frozenset({"temperature", "top_p"})}),
    )
    assert source.requests[-1].sampling == base.sampling
