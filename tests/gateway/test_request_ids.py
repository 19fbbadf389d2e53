"""Each HTTP request's id (gateway/request_ids.py): kept when the client's is valid, new otherwise,
returned as `X-Request-Id`, and bound while the request runs (the token source, and so the shard call's
metadata, sees it), in memory over the scripted token source."""

import logging
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from gateway.request_ids import RequestIds
from gateway.token_source import TokenEvent, TokenRequest
from gateway.tokenization import ModelTokenizer
from services.platform.request_context import RequestIdFilter, current_request_id, request_id_metadata
from tests.gateway.fakes import MODEL, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2}


@dataclass
class RecordingSource:
    """The scripted source, noting the request id bound when each generation starts."""

    inner: ScriptedTokenSource
    seen: list[str | None] = field(default_factory=list[str | None])
    metadata: list[tuple[tuple[str, str], ...]] = field(default_factory=list[tuple[tuple[str, str], ...]])

    def generate(self, request: TokenRequest) -> AsyncGenerator[TokenEvent]:
        self.seen.append(current_request_id())
        self.metadata.append(request_id_metadata())
        return self.inner.generate(request)


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collected]:
    handler = Collected()
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def client(source: RecordingSource, tokenizer: ModelTokenizer) -> httpx.AsyncClient:
    app = RequestIds(build_gateway(tokenizer, source))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", timeout=30.0)


async def test_a_new_id_is_returned_and_bound_for_the_generation(
    model_tokenizer: ModelTokenizer, collected: Collected
) -> None:
    source = RecordingSource(scripted_source(model_tokenizer))
    async with client(source, model_tokenizer) as http:
        first = await http.post("/v1/chat/completions", json=CHAT)
        second = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})

    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert first.status_code == second.status_code == 200
    assert len(set(ids)) == 2 and all(len(request_id) == 32 for request_id in ids)
    assert source.seen == ids
    assert source.metadata == [(("x-request-id", request_id),) for request_id in ids]
    access = [record for record in collected.records if record.getMessage().startswith("POST /v1/chat")]
    assert [getattr(record, "request_id") for record in access] == ids  # noqa: B009
    assert all(record.levelno == logging.INFO for record in access)


async def test_a_valid_client_id_is_kept(model_tokenizer: ModelTokenizer) -> None:
    source = RecordingSource(scripted_source(model_tokenizer))
    async with client(source, model_tokenizer) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "trace-1:a/b"})

    assert response.headers["x-request-id"] == "trace-1:a/b"
    assert source.seen == ["trace-1:a/b"]


@pytest.mark.parametrize("given", ["has space", "x" * 129, "-dash-first"])
async def test_an_invalid_client_id_is_replaced_not_refused(model_tokenizer: ModelTokenizer, given: str) -> None:
    source = RecordingSource(scripted_source(model_tokenizer))
    async with client(source, model_tokenizer) as http:
        response = await http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": given})

    assert response.status_code == 200
    assert response.headers["x-request-id"] != given and source.seen == [response.headers["x-request-id"]]


async def test_errors_and_polled_paths_have_an_id_too(model_tokenizer: ModelTokenizer, collected: Collected) -> None:
    source = RecordingSource(scripted_source(model_tokenizer))
    async with client(source, model_tokenizer) as http:
        bad = await http.post("/v1/chat/completions", content=b"{not json")
        health = await http.get("/health")

    assert bad.status_code == 400 and bad.headers["x-request-id"]
    assert health.status_code == 200 and health.headers["x-request-id"]
    [polled] = [record for record in collected.records if record.getMessage().startswith("GET /health 200")]
    assert polled.levelno == logging.DEBUG
    assert current_request_id() is None  # nothing leaks out of a request


DIALECT_CALLS: list[tuple[str, dict[str, object]]] = [
    ("/v1/chat/completions", dict(CHAT)),
    ("/v1/completions", {"model": MODEL, "prompt": "Say hello.", "max_tokens": 2}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": 2}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 2}}),
    ("/api/generate", {"model": MODEL, "prompt": "Hi", "options": {"num_predict": 2}}),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body"), DIALECT_CALLS)
async def test_every_dialect_returns_the_id(
    model_tokenizer: ModelTokenizer, path: str, body: dict[str, object], stream: bool
) -> None:
    source = RecordingSource(scripted_source(model_tokenizer))
    async with client(source, model_tokenizer) as http:
        response = await http.post(path, json={**body, "stream": stream}, headers={"X-Request-Id": "trace-7"})
        unknown = await http.post(path, json={**body, "model": "no-such-model", "stream": stream})

    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-7"
    assert source.seen == ["trace-7"]
    assert unknown.status_code == 404 and unknown.headers["x-request-id"]
