"""The Ollama dialect behind a real uvicorn server, called by the official `ollama` client and raw httpx."""

import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from gateway.api_keys import ApiKeyGuard
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, scripted_source
from tests.gateway.harness import build_gateway, running_server

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture
def base_url(model_tokenizer: ModelTokenizer) -> Iterator[str]:
    with running_server(build_gateway(model_tokenizer, scripted_source(model_tokenizer))) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=30.0)


def test_chat_whole_and_streamed(client: ollama.Client) -> None:
    reply = client.chat(  # pyright: ignore[reportUnknownMemberType]  (the client types `tools` loosely)
        model=MODEL,
        messages=[ollama.Message(role="user", content="Say hello.")],
        stream=False,
        options={"temperature": 0},
    )
    assert reply.message.content == REPLY_TEXT
    assert reply.done and reply.done_reason == "stop"
    assert reply.eval_count is not None and reply.eval_count > 0
    assert reply.prompt_eval_count is not None and reply.prompt_eval_count > 0
    assert reply.total_duration is not None and reply.eval_duration is not None
    parts = list(
        client.chat(  # pyright: ignore[reportUnknownMemberType]  (the client types `tools` loosely)
            model=MODEL,
            messages=[ollama.Message(role="user", content="Say hello.")],
            options={"stop": ["fox"]},
            keep_alive="5m",
            stream=True,
        )
    )
    assert "".join(part.message.content or "" for part in parts) == "Hello world! 日本語 😀🎉 The quick brown "
    assert [part.done for part in parts][-1] is True


def test_generate(client: ollama.Client) -> None:
    reply = client.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 2})
    assert reply.done_reason == "length" and reply.eval_count == 2
    streamed = "".join(part.response or "" for part in client.generate(model=MODEL, prompt="Say hello.", stream=True))
    assert streamed == REPLY_TEXT


def test_models(client: ollama.Client, base_url: str) -> None:
    assert [model.model for model in client.list().models] == [MODEL]
    assert [model.model for model in client.ps().models] == [MODEL]
    assert client.show(MODEL).details is not None
    assert httpx.head(base_url).status_code == 200
    assert httpx.get(f"{base_url}/api/version").json()["version"]


def test_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as not_found:
        client.chat(model="llama9", messages=[ollama.Message(role="user", content="hi")])  # pyright: ignore[reportUnknownMemberType]
    assert not_found.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as bad_schema:
        client.chat(  # pyright: ignore[reportUnknownMemberType]
            model=MODEL, messages=[ollama.Message(role="user", content="hi")], format={"type": "text"}, stream=False
        )
    assert bad_schema.value.status_code == 400 and "Invalid JSON schema for format" in bad_schema.value.error
    with pytest.raises(ollama.ResponseError) as wrong_type:
        client.chat(model=MODEL, messages=[ollama.Message(role="user", content="hi")], options={"temperature": "hot"})  # type: ignore[dict-item]  # pyright: ignore[reportUnknownMemberType]
    assert wrong_type.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as unknown_show:
        client.show("llama9")
    assert unknown_show.value.status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}),
        (
            "/v1/messages",
            {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        ),
        ("/v1/responses", {"model": MODEL, "input": "Hi", "stream": True}),
    ],
)
def test_client_leaving_a_stream_cancels_the_request(
    model_tokenizer: ModelTokenizer, path: str, body: dict[str, object]
) -> None:
    source = scripted_source(model_tokenizer, token_delay_seconds=0.2)
    with (
        running_server(build_gateway(model_tokenizer, source)) as url,
        httpx.Client(base_url=url, timeout=30.0) as http,
    ):
        with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the stream has begun; now hang up
        deadline = time.monotonic() + 10.0
        while len(source.cancelled) != 1:
            assert time.monotonic() < deadline, "the request was not cancelled"
            time.sleep(0.01)
    assert source.completed == []


def test_api_keys_guard_the_ollama_routes(model_tokenizer: ModelTokenizer) -> None:
    app = ApiKeyGuard(build_gateway(model_tokenizer, scripted_source(model_tokenizer)), (b"k1",))
    with running_server(app) as url:  # pyright: ignore[reportArgumentType]
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=url, timeout=30.0).list()
        assert refused.value.status_code == 401
        keyed = ollama.Client(host=url, timeout=30.0, headers={"Authorization": "Bearer k1"})
        assert [model.model for model in keyed.list().models] == [MODEL]
        assert httpx.head(url).status_code == 200  # Ollama's liveness probe stays open
        anthropic_style = httpx.get(f"{url}/api/tags", headers={"x-api-key": "k1"})
        assert anthropic_style.status_code == 200
