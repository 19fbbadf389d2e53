"""The gateway's metrics in memory: the OpenAI app wrapped as `strata gateway` wraps it, scraped at `/metrics`."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api_keys import ApiKeyGuard
from gateway.app import create_app
from gateway.completion_engine import CompletionEngine
from gateway.metrics import GatewayMetrics, HttpMetrics
from gateway.recovery import RecoveryCounts
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, StaticCatalog, StaticTokenizers, scripted_source

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

API_KEY = "test-key"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels (parsed with prometheus_client's own parser)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def client_for(model_tokenizer: ModelTokenizer, metrics: GatewayMetrics) -> httpx.AsyncClient:
    source = scripted_source(model_tokenizer)
    engine = CompletionEngine(source, StaticTokenizers({MODEL: model_tokenizer}), metrics)
    app = create_app(engine, StaticCatalog(models=[MODEL], ready={MODEL}))
    wrapped = HttpMetrics(ApiKeyGuard(app, (API_KEY.encode(),)), metrics)
    transport = httpx.ASGITransport(app=wrapped)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30.0)


async def test_a_completion_moves_tokens_by_its_usage_and_the_latency_histograms(
    model_tokenizer: ModelTokenizer,
) -> None:
    metrics = GatewayMetrics()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with client_for(model_tokenizer, metrics) as client:
        before = await client.get("/metrics")  # open: no API key
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        reply = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        streamed = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=headers,
        )
        refused = await client.post("/v1/chat/completions", json=CHAT)
        await client.get(f"/v1/models/{MODEL}", headers=headers)
        after = samples((await client.get("/metrics")).text)
    assert reply.status_code == 200 and streamed.status_code == 200 and refused.status_code == 401
    usage = reply.json()["usage"]
    stream_usage = [line for line in streamed.text.split("\n\n") if '"usage":{' in line]
    assert stream_usage, streamed.text
    assert after[("strata_gateway_prompt_tokens_total", ())] == 2 * usage["prompt_tokens"]
    assert after[("strata_gateway_completion_tokens_total", ())] == 2 * usage["completion_tokens"]
    assert after[("strata_gateway_time_to_first_token_seconds_count", ())] == 2
    assert after[("strata_gateway_time_per_output_token_seconds_count", ())] == 2
    assert after[("strata_gateway_inter_token_latency_seconds_count", ())] == 2 * (usage["completion_tokens"] - 1)
    assert after[("strata_gateway_requests_in_flight", ())] == 0
    route = "/v1/chat/completions"
    assert after[("strata_gateway_http_requests_total", (("route", route), ("status", "200")))] == 2
    assert after[("strata_gateway_http_requests_total", (("route", route), ("status", "401")))] == 1
    model_route = (("route", "/v1/models/{model_id:path}"), ("status", "200"))
    assert after[("strata_gateway_http_requests_total", model_route)] == 1  # the template, never the id
    assert after[("strata_gateway_http_requests_total", (("route", "/metrics"), ("status", "200")))] == 1
    assert after[("strata_gateway_replays_total", ())] == 0


async def test_recovery_counts_are_read_at_scrape_time() -> None:
    counts = RecoveryCounts()

    def current() -> RecoveryCounts:
        return counts

    metrics = GatewayMetrics(current)
    counts = RecoveryCounts(replays=3, replayed_tokens=41, recoveries_failed=1)
    scraped = samples(metrics.exposition().decode())
    assert scraped[("strata_gateway_replays_total", ())] == 3
    assert scraped[("strata_gateway_replayed_tokens_total", ())] == 41
    assert scraped[("strata_gateway_recoveries_failed_total", ())] == 1


async def test_every_gateway_has_a_registry_of_its_own() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.generation().finished(5, 7)
    assert samples(second.exposition().decode())[("strata_gateway_prompt_tokens_total", ())] == 0
    assert samples(first.exposition().decode())[("strata_gateway_completion_tokens_total", ())] == 7


async def test_metrics_refuses_other_methods(model_tokenizer: ModelTokenizer) -> None:
    async with client_for(model_tokenizer, GatewayMetrics()) as client:
        assert (await client.post("/metrics")).status_code == 405
