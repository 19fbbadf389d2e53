"""The OpenAI HTTP surface in memory (httpx over ASGI), with the scripted token source."""

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest

from gateway.token_source import GeneratedToken, TokenEvent, TokenRequest
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway, in_memory_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}


def sse_payloads(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


async def post(source: ScriptedTokenSource, tokenizer: ModelTokenizer, path: str, body: object) -> httpx.Response:
    async with in_memory_client(build_gateway(tokenizer, source)) as client:
        return await client.post(path, json=body)


async def test_chat_completion(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    response = await post(source, model_tokenizer, "/v1/chat/completions", CHAT)
    assert response.status_code == 200
    reply = response.json()
    assert reply["object"] == "chat.completion"
    assert reply["id"].startswith("chatcmpl-") and len(reply["id"]) == len("chatcmpl-") + 32
    assert reply["model"] == MODEL
    [choice] = reply["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLY_TEXT}
    assert choice["finish_reason"] == "stop"
    usage = reply["usage"]
    assert usage["completion_tokens"] == len(source.reply_tokens) + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert source.requests[0].request_id == reply["id"]


async def test_chat_stream_with_usage(model_tokenizer: ModelTokenizer) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await post(scripted_source(model_tokenizer), model_tokenizer, "/v1/chat/completions", body)
    assert response.status_code == 200
    chunks = sse_chunks(response)
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks[1:-2])
    assert content == REPLY_TEXT
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_chat_stream_without_usage(model_tokenizer: ModelTokenizer) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 2}
    chunks = sse_chunks(await post(scripted_source(model_tokenizer), model_tokenizer, "/v1/chat/completions", body))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(chunk["usage"] is None for chunk in chunks)


async def test_content_parts_stop_and_max_completion_tokens(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]},
        ],
        "stop": "brown",
        "max_tokens": 1,
        "max_completion_tokens": 40,
        "logit_bias": {"50": 1},  # unknown to this gateway: ignored
    }
    response = await post(source, model_tokenizer, "/v1/chat/completions", body)
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hello world! 日本語 😀🎉 The quick ", "stop")
    [sent] = source.requests
    assert sent.max_tokens == 40
    assert model_tokenizer.decode(sent.prompt_tokens).endswith("system\nBe brief.\nuser\nSay\nhello.\nassistant\n")


async def test_completion_and_its_stream(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
    response = await post(source, model_tokenizer, "/v1/completions", body)
    reply = response.json()
    assert reply["object"] == "text_completion" and reply["id"].startswith("cmpl-")
    assert reply["choices"][0]["text"] == model_tokenizer.decode(source.reply_tokens[:5])
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 5

    streamed = await post(source, model_tokenizer, "/v1/completions", {**body, "stream": True})
    chunks = sse_chunks(streamed)
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == reply["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_default_to_16_tokens(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    await post(source, model_tokenizer, "/v1/completions", {"model": MODEL, "prompt": ["Once"]})
    assert source.requests[0].max_tokens == 16


async def test_seed_is_chosen_by_the_gateway_when_sampling(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    bodies = (
        {**CHAT, "temperature": 0.8},
        {**CHAT, "temperature": 0.8},
        {**CHAT, "seed": 7},
        {**CHAT, "temperature": 0},
    )
    for body in bodies:
        assert (await post(source, model_tokenizer, "/v1/chat/completions", body)).status_code == 200
    first, second, seeded, greedy = (request.sampling for request in source.requests)
    assert first.seed != second.seed  # random, and recorded in the request for replays
    assert (seeded.seed, seeded.temperature) == (7, 1.0)  # OpenAI's default temperature
    assert (greedy.seed, greedy.temperature) == (0, 0.0)


async def test_models_and_health(model_tokenizer: ModelTokenizer) -> None:
    async with in_memory_client(build_gateway(model_tokenizer, scripted_source(model_tokenizer))) as client:
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [(card["id"], card["object"], card["owned_by"]) for card in models["data"]] == [
            (MODEL, "model", "strata")
        ]
        assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
        missing = await client.get("/v1/models/other")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ready"})
    starting = build_gateway(model_tokenizer, scripted_source(model_tokenizer), ready=False)
    async with in_memory_client(starting) as client:
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "starting"})


@pytest.mark.parametrize("stream", [False, True])
async def test_no_ready_instance_is_503_with_retry_after(model_tokenizer: ModelTokenizer, stream: bool) -> None:
    source = scripted_source(model_tokenizer, unavailable=True)
    response = await post(source, model_tokenizer, "/v1/chat/completions", {**CHAT, "stream": stream})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"]["code"] == "model_not_ready"


async def test_pipeline_failure_before_streaming_is_502(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer, fail_after_tokens=0)
    response = await post(source, model_tokenizer, "/v1/chat/completions", CHAT)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "pipeline_error")
    assert "10.0.0.2" not in error["message"]


async def test_pipeline_failure_mid_stream_ends_with_an_error_event(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer, fail_after_tokens=4)
    response = await post(source, model_tokenizer, "/v1/chat/completions", {**CHAT, "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "pipeline_error"
    content = "".join(json.loads(payload)["choices"][0]["delta"].get("content", "") for payload in payloads[:-2])
    assert content == "Hello world!"


class BrokenTokenSource:
    """A token source with a bug: it raises something no layer expects."""

    async def generate(self, request: TokenRequest) -> AsyncGenerator[TokenEvent]:
        if request.max_tokens > 0:
            raise RuntimeError("secret internal detail at /srv/strata")
        yield GeneratedToken(token_id=0)


async def test_unexpected_errors_are_500_without_internals(model_tokenizer: ModelTokenizer) -> None:
    app = build_gateway(model_tokenizer, BrokenTokenSource())
    async with in_memory_client(app, raise_app_exceptions=False) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "secret" not in response.text


async def test_unknown_route_and_method_are_openai_errors(model_tokenizer: ModelTokenizer) -> None:
    async with in_memory_client(build_gateway(model_tokenizer, scripted_source(model_tokenizer))) as client:
        missing = await client.post("/v1/audio/speech", json={})
        wrong_method = await client.get("/v1/chat/completions")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/audio/speech" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}
