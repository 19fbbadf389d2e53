"""The gateway behind a real uvicorn server, called by the official `openai` client and raw httpx.

Also proves that a client that goes away cancels its request upstream, streaming or not.
"""

import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway, running_server

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

WAIT_SECONDS = 10.0


@pytest.fixture
def source(model_tokenizer: ModelTokenizer) -> ScriptedTokenSource:
    return scripted_source(model_tokenizer)


@pytest.fixture
def base_url(model_tokenizer: ModelTokenizer, source: ScriptedTokenSource) -> Iterator[str]:
    with running_server(build_gateway(model_tokenizer, source)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30.0) as client:
        yield client


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], temperature=0, seed=1
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == REPLY_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_chat_completion_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
        stop=["fox"],
    )
    contents: list[str] = []
    finish_reasons: list[str] = []
    usage_seen = False
    for chunk in stream:
        for choice in chunk.choices:
            contents.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
        usage_seen = usage_seen or chunk.usage is not None
    assert "".join(contents) == "Hello world! 日本語 😀🎉 The quick brown "
    assert finish_reasons == ["stop"]
    assert usage_seen


def test_completion_and_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=50)
    assert completion.choices[0].text == REPLY_TEXT
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(model=MODEL, prompt="Once", max_tokens=50, stream=True)
        if chunk.choices
    )
    assert streamed == REPLY_TEXT


def test_models_and_errors(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_request:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert bad_request.value.param == "temperature"
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices


def test_client_leaving_a_stream_cancels_the_request(base_url: str, source: ScriptedTokenSource) -> None:
    source.token_delay_seconds = 0.2
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=30.0) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        next(response.iter_lines())  # the stream has begun; now hang up
    wait_until(lambda: len(source.cancelled) == 1)
    assert source.completed == []


def test_client_leaving_a_whole_reply_cancels_the_request(base_url: str, source: ScriptedTokenSource) -> None:
    source.token_delay_seconds = 0.2
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    with httpx.Client(base_url=base_url, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body)
    wait_until(lambda: len(source.cancelled) == 1)
    assert source.completed == []
