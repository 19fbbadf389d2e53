"""Structured output in every dialect: the grammar reaches the token source, bad schemas get 400 in its shape."""

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import llguidance
import pytest

from gateway.output_grammar import compile_output_grammar, json_value_grammar
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway, in_memory_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
BAD_SCHEMA = {"type": "object", "properties": {"name": {"type": "text"}}}
MESSAGES = [{"role": "user", "content": "Your name, as JSON."}]


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str
    fields: dict[str, object]
    """The request without its format."""
    format_field: str
    """Where the format goes (dotted: nested object)."""
    param: str
    """The parameter a refusal names."""


DIALECTS = (
    Dialect("chat", "/v1/chat/completions", {"messages": MESSAGES}, "response_format", "response_format"),
    Dialect("completions", "/v1/completions", {"prompt": "JSON:"}, "response_format", "response_format"),
    Dialect("responses", "/v1/responses", {"input": "Your name, as JSON."}, "text.format", "text.format"),
    Dialect("ollama chat", "/api/chat", {"messages": MESSAGES, "stream": False}, "format", "format"),
    Dialect("ollama generate", "/api/generate", {"prompt": "JSON:", "stream": False}, "format", "format"),
)


def openai_schema_format(dialect: Dialect, schema: object) -> object:
    if dialect.format_field == "format":
        return schema
    if dialect.format_field == "text.format":
        return {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def json_object_format(dialect: Dialect) -> object:
    return "json" if dialect.format_field == "format" else {"type": "json_object"}


def request_body(dialect: Dialect, response_format: object) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, **dialect.fields}
    if dialect.format_field == "text.format":
        body["text"] = {"format": response_format}
    else:
        body[dialect.format_field] = response_format
    return body


async def post(
    tokenizer: ModelTokenizer, dialect: Dialect, response_format: object
) -> tuple[httpx.Response, ScriptedTokenSource]:
    source = scripted_source(tokenizer)
    async with in_memory_client(build_gateway(tokenizer, source)) as client:
        reply = await client.post(dialect.path, json=request_body(dialect, response_format))
    return reply, source


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
async def test_a_json_schema_travels_as_the_request_grammar(model_tokenizer: ModelTokenizer, dialect: Dialect) -> None:
    reply, source = await post(model_tokenizer, dialect, openai_schema_format(dialect, SCHEMA))
    assert reply.status_code == 200, reply.text
    (request,) = source.requests
    expected = compile_output_grammar(json_value_grammar(SCHEMA), model_tokenizer.stop_token_ids)
    assert request.sampling.grammar == expected


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
async def test_json_object_asks_for_some_object(
    model_tokenizer: ModelTokenizer, model_directory: Path, dialect: Dialect
) -> None:
    reply, source = await post(model_tokenizer, dialect, json_object_format(dialect))
    assert reply.status_code == 200, reply.text
    (request,) = source.requests
    assert request.sampling.grammar is not None
    tokenizer_json = (model_directory / "tokenizer.json").read_text()
    tokenizer = llguidance.LLTokenizer(tokenizer_json, eos_token=model_tokenizer.stop_token_ids[0])
    matcher = llguidance.LLMatcher(tokenizer, request.sampling.grammar, log_level=0)
    assert matcher.consume_tokens(tokenizer.tokenize_str('{"a": 1}'))
    assert matcher.consume_token(model_tokenizer.stop_token_ids[0]) and matcher.is_accepting()


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
async def test_no_format_means_no_grammar(model_tokenizer: ModelTokenizer, dialect: Dialect) -> None:
    source = scripted_source(model_tokenizer)
    async with in_memory_client(build_gateway(model_tokenizer, source)) as client:
        reply = await client.post(dialect.path, json={"model": MODEL, **dialect.fields})
    assert reply.status_code == 200, reply.text
    assert source.requests[0].sampling.grammar is None


async def test_text_format_asks_for_no_grammar(model_tokenizer: ModelTokenizer) -> None:
    for dialect in DIALECTS[:3]:
        reply, source = await post(model_tokenizer, dialect, {"type": "text"})
        assert reply.status_code == 200, reply.text
        assert source.requests[0].sampling.grammar is None


def error_of(dialect: Dialect, reply: httpx.Response) -> tuple[str, str | None]:
    """The message and the named parameter, from the dialect's own error shape."""
    document = reply.json()
    if dialect.path.startswith("/api/"):
        assert set(document) == {"error"}
        return document["error"], None
    error = document["error"]
    assert error["type"] == "invalid_request_error"
    return error["message"], error["param"]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
async def test_a_schema_llguidance_refuses_is_a_400_in_the_dialects_shape(
    model_tokenizer: ModelTokenizer, dialect: Dialect
) -> None:
    reply, source = await post(model_tokenizer, dialect, openai_schema_format(dialect, BAD_SCHEMA))
    assert reply.status_code == 400
    message, param = error_of(dialect, reply)
    assert message.startswith(f"Invalid JSON schema for {dialect.param}: ")
    assert "text" in message
    assert param in (None, dialect.param)
    assert not source.requests


@pytest.mark.parametrize(
    ("dialect", "response_format"),
    [
        (DIALECTS[0], {"type": "xml"}),
        (DIALECTS[0], {"type": "json_schema"}),
        (DIALECTS[0], {"type": "json_schema", "json_schema": {"name": "has spaces", "schema": SCHEMA}}),
        (DIALECTS[0], {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
        (DIALECTS[1], "json_object"),
        (DIALECTS[2], {"type": "json_schema", "schema": SCHEMA}),
        (DIALECTS[3], "yaml"),
        (DIALECTS[4], ["json"]),
    ],
    ids=[
        "unknown type",
        "no json_schema",
        "bad name",
        "schema not an object",
        "a bare string",
        "no name",
        "yaml",
        "a list",
    ],
)
async def test_a_malformed_format_is_a_400(
    model_tokenizer: ModelTokenizer, dialect: Dialect, response_format: object
) -> None:
    reply, source = await post(model_tokenizer, dialect, response_format)
    assert reply.status_code == 400, reply.text
    message, _ = error_of(dialect, reply)
    assert message
    assert not source.requests


async def test_streamed_chat_with_a_bad_schema_is_refused_before_the_stream(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body = request_body(DIALECTS[0], openai_schema_format(DIALECTS[0], BAD_SCHEMA)) | {"stream": True}
    async with in_memory_client(build_gateway(model_tokenizer, source)) as client:
        reply = await client.post("/v1/chat/completions", content=json.dumps(body))
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_json_schema"
