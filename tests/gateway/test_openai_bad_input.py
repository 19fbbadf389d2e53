"""Bad input on the OpenAI surface: each case gets its 4xx and OpenAI error JSON, nothing breaks."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.request_body import DEFAULT_MAX_BODY_BYTES
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, scripted_source
from tests.gateway.harness import build_gateway, in_memory_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
USER_MESSAGE = {"role": "user", "content": "Say hello."}


@dataclass(frozen=True)
class BadInput:
    name: str
    body: bytes
    status: int
    param: str | None = None
    code: str | None = None
    path: str = CHAT_PATH


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def chat(**fields: object) -> bytes:
    return body(**{"model": MODEL, "messages": [USER_MESSAGE], **fields})


def one_message(**message: object) -> bytes:
    return chat(messages=[message])


CASES = (
    BadInput("malformed JSON", b'{"model": "tiny-chat", "messages": [', 400, code="invalid_json"),
    BadInput("not JSON at all", b"hello", 400, code="invalid_json"),
    BadInput("JSON array body", b"[]", 400),
    BadInput("deeply nested JSON", b"[" * 100_000, 400, code="invalid_json"),
    BadInput("lone surrogate escape", chat().replace(b"Say hello.", b"\\ud800"), 400, code="invalid_json"),
    BadInput("invalid UTF-8", chat().replace(b"Say hello.", b"\xff\xfe"), 400, code="invalid_json"),
    BadInput("missing model", body(messages=[USER_MESSAGE]), 400, "model", "missing_required_parameter"),
    BadInput("messages is a string", chat(messages="hi"), 400, "messages", "invalid_type"),
    BadInput("content is a number", one_message(role="user", content=5), 400, "messages[0].content", "invalid_type"),
    BadInput("unsupported role", one_message(role="function", content="x"), 400, "messages[0].role"),
    BadInput("no content", one_message(role="user"), 400, "messages[0]"),
    BadInput("tool turn without its call id", one_message(role="tool", content="sunny"), 400, "messages[0]"),
    BadInput("image part", one_message(role="user", content=[{"type": "image_url"}]), 400, "messages[0].content"),
    BadInput("temperature as a string", chat(temperature="0.5"), 400, "temperature", "invalid_type"),
    BadInput("max_tokens as a string", chat(max_tokens="5"), 400, "max_tokens", "invalid_type"),
    BadInput("max_tokens as a bool", chat(max_tokens=True), 400, "max_tokens", "invalid_type"),
    BadInput("stream as a string", chat(stream="yes"), 400, "stream", "invalid_type"),
    BadInput("unknown model", chat(model="gpt-17"), 404, "model", "model_not_found"),
    BadInput("max_tokens -1", chat(max_tokens=-1), 400, "max_tokens"),
    BadInput("max_tokens 0", chat(max_tokens=0), 400, "max_tokens"),
    BadInput("max_tokens beyond the context", chat(max_tokens=10**9), 400, "max_tokens", "context_length_exceeded"),
    BadInput("empty messages", chat(messages=[]), 400, "messages"),
    BadInput("temperature 5", chat(temperature=5), 400, "temperature"),
    BadInput("temperature NaN", chat().replace(b"}", b', "temperature": NaN}'), 400, "temperature"),
    BadInput("top_p 0", chat(top_p=0), 400, "top_p"),
    BadInput("negative seed", chat(seed=-1), 400, "seed"),
    BadInput("n=9, above the limit", chat(n=9), 400, "n"),
    BadInput("n=0", chat(n=0), 400, "n"),
    BadInput("top_logprobs 21", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    BadInput("top_logprobs without logprobs", chat(top_logprobs=2), 400),
    BadInput(
        "completions logprobs 21", body(model=MODEL, prompt="a", logprobs=21), 400, "logprobs", path=COMPLETIONS_PATH
    ),
    BadInput("logit_bias key not a token id", chat(logit_bias={"hello": 1}), 400, "logit_bias"),
    BadInput("logit_bias negative key", chat(logit_bias={"-5": 1}), 400, "logit_bias"),
    BadInput("logit_bias value 101", chat(logit_bias={"5": 101}), 400, "logit_bias"),
    BadInput("logit_bias value a string", chat(logit_bias={"5": "1"}), 400, "logit_bias"),
    BadInput("logit_bias beyond the vocabulary", chat(logit_bias={"99999999": 1}), 400, "logit_bias", "invalid_value"),
    BadInput("presence_penalty 3", chat(presence_penalty=3), 400, "presence_penalty"),
    BadInput("frequency_penalty -2.5", chat(frequency_penalty=-2.5), 400, "frequency_penalty"),
    BadInput("repetition_penalty 0", chat(repetition_penalty=0), 400, "repetition_penalty"),
    BadInput("min_p 1.5", chat(min_p=1.5), 400, "min_p"),
    BadInput("five stop strings", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    BadInput("empty stop string", chat(stop=[""]), 400, "stop[0]"),
    BadInput("prompt beyond the context", one_message(role="user", content="hello " * 400), 400, "messages"),
    BadInput("template refuses the chat", one_message(role="assistant", content="hi"), 400, "messages"),
    BadInput("completion without prompt", body(model=MODEL), 400, "prompt", path=COMPLETIONS_PATH),
    BadInput("two prompts", body(model=MODEL, prompt=["a", "b"]), 400, "prompt", path=COMPLETIONS_PATH),
    BadInput("token id prompt", body(model=MODEL, prompt=[1, 2, 3]), 400, "prompt", path=COMPLETIONS_PATH),
    BadInput("oversized body", chat(padding="x" * DEFAULT_MAX_BODY_BYTES), 413, code="request_too_large"),
)


def assert_openai_error(response: httpx.Response, status: int, param: str | None, code: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_bad_inputs_get_their_error_and_the_gateway_keeps_serving(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    async with in_memory_client(build_gateway(model_tokenizer, source)) as client:
        for case in CASES:
            response = await client.post(case.path, content=case.body, headers={"content-type": "application/json"})
            try:
                assert_openai_error(response, case.status, case.param, case.code)
            except AssertionError as failure:
                raise AssertionError(f"case {case.name!r}: {failure}") from failure
        assert source.requests == []  # nothing invalid reached the pipeline
        healthy = await client.post(CHAT_PATH, content=chat())
        assert healthy.status_code == 200
        assert healthy.json()["choices"][0]["message"]["content"] == REPLY_TEXT


async def test_oversized_body_without_content_length_is_cut_off(model_tokenizer: ModelTokenizer) -> None:
    """A chunked upload never declares its size: the limit is enforced while reading."""
    sent_bytes = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent_bytes
        yield b'{"model": "tiny-chat", "messages": [], "padding": "'
        for _ in range(64):
            sent_bytes += 64 * 1024
            yield b"x" * (64 * 1024)
        yield b'"}'

    app = build_gateway(model_tokenizer, scripted_source(model_tokenizer), max_body_bytes=256 * 1024)
    async with in_memory_client(app) as client:
        response = await client.post(CHAT_PATH, content=chunks())
        assert "content-length" not in response.request.headers
        assert_openai_error(response, 413, None, "request_too_large")
        assert (await client.post(CHAT_PATH, content=chat())).status_code == 200
