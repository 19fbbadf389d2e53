"""SSE keep-alive comments on quiet streams, CORS for configured origins, and the forced tool-call grammar."""

import asyncio
from collections.abc import AsyncGenerator

import httpx
import pytest

from gateway.api_keys import ApiKeyGuard
from gateway.cors import cors_origins, with_cors
from gateway.forced_tool_calls import forced_call_grammar
from gateway.output_grammar import compile_output_grammar
from gateway.stream_keepalive import KEEPALIVE_COMMENT, with_keepalive
from gateway.tokenization import ModelTokenizer
from gateway.tool_definitions import NamedToolChoice, ToolDefinition
from tests.gateway.chat_templates import QWEN25_TOOLS_TEMPLATE
from tests.gateway.fakes import scripted_source
from tests.gateway.harness import build_gateway
from tests.gateway.tiny_tokenizer import build_model_directory

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ALLOWED = "http://localhost:3000"


@pytest.mark.anyio
async def test_quiet_stream_gets_keepalive_comments_and_closing_closes_it() -> None:
    closed: list[bool] = []

    async def slow() -> AsyncGenerator[str]:
        try:
            yield "data: 1\n\n"
            await asyncio.sleep(0.35)
            yield "data: 2\n\n"
            await asyncio.sleep(30)
            yield "never"
        finally:
            closed.append(True)

    received: list[str] = []
    stream = with_keepalive(slow(), interval_seconds=0.1)
    async for item in stream:
        received.append(item)
        if item == "data: 2\n\n":
            break
    await stream.aclose()
    assert received[0] == "data: 1\n\n" and received[-1] == "data: 2\n\n"
    assert 2 <= received.count(KEEPALIVE_COMMENT) <= 4
    assert closed == [True]


@pytest.mark.anyio
async def test_a_pending_step_is_cancelled_on_close() -> None:
    closed: list[bool] = []

    async def stalled() -> AsyncGenerator[str]:
        try:
            await asyncio.sleep(30)
            yield "never"
        finally:
            closed.append(True)

    stream = with_keepalive(stalled(), interval_seconds=0.05)
    assert await anext(stream) == KEEPALIVE_COMMENT
    await stream.aclose()
    assert closed == [True]


@pytest.mark.anyio
async def test_cors_for_allowed_origins_only(model_tokenizer: ModelTokenizer) -> None:
    app = with_cors(ApiKeyGuard(build_gateway(model_tokenizer, scripted_source(model_tokenizer)), (b"k",)), [ALLOWED])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
        allowed = await client.options("/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
        refused = await client.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        listed = await client.get("/v1/models", headers={"Origin": ALLOWED, "Authorization": "Bearer k"})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == ALLOWED
        unkeyed = await client.get("/v1/models", headers={"Origin": ALLOWED})
        assert unkeyed.status_code == 401  # CORS lets the page read the answer, not skip the key


def test_cors_origins_from_flags_or_environment() -> None:
    assert cors_origins(None, {}) == ()
    assert cors_origins(None, {"STRATA_CORS_ORIGINS": "http://a.test, https://b.test:8443/"}) == (
        "http://a.test",
        "https://b.test:8443",
    )
    assert cors_origins(["*"], {"STRATA_CORS_ORIGINS": "http://a.test"}) == ("*",)
    with pytest.raises(ValueError, match="must be"):
        cors_origins(["localhost:3000"], {})


WEATHER = ToolDefinition(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
)


def test_forced_call_grammars() -> None:
    assert forced_call_grammar((WEATHER,), "auto", "hermes", close_reasoning=False) is None
    named = forced_call_grammar(
        (WEATHER, ToolDefinition(name="noop")), NamedToolChoice(name="get_weather"), "hermes", close_reasoning=False
    )
    assert named is not None and '"<tool_call>\\n" value "\\n</tool_call>"' in named.lark
    assert '"noop"' not in named.lark
    compile_output_grammar(named)
    required = forced_call_grammar(
        (WEATHER, ToolDefinition(name="noop")), "required", "llama3_json", close_reasoning=True
    )
    assert required is not None and '"anyOf"' in required.lark and '"parameters"' in required.lark
    assert '"</think>\\n\\n" value' in required.lark
    compile_output_grammar(required)


@pytest.mark.anyio
async def test_required_tool_choice_sends_a_grammar_and_a_refused_schema_is_a_400(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = build_model_directory(
        tmp_path_factory.mktemp("forced"), chat_template=QWEN25_TOOLS_TEMPLATE, context_length=4096
    )
    tokenizer = ModelTokenizer.from_directory(directory)
    source = scripted_source(tokenizer)
    transport = httpx.ASGITransport(app=build_gateway(tokenizer, source))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}}
    body: dict[str, object] = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as client:
        await client.post("/v1/chat/completions", json={**body, "tool_choice": "required"})
        assert source.requests[-1].sampling.grammar
        await client.post("/v1/chat/completions", json=body)
        assert not source.requests[-1].sampling.grammar  # auto: the model decides, unconstrained
        bad = {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}},
        }
        refused = await client.post("/v1/chat/completions", json={**body, "tools": [bad], "tool_choice": "required"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"
