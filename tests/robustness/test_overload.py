"""Over-admission and disconnects against a real cluster (one running request, one waiting per instance).

More concurrent long requests than the admission limit: the excess gets 503 with `Retry-After` and
OpenAI error JSON (streaming ones before any SSE byte), nothing crashes, the first shard never runs
more than its limit, the admitted requests give the same text as when run alone, and afterwards
every shard's KV caches are back to zero. A client that disconnects mid-stream frees its KV cache
on every shard.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from strata_wire import shard_pb2
from tests.robustness.cluster_probe import complete, completion_body, shard_stats, wait_until_idle
from tests.robustness.conftest import OverloadCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

LONG_TOKENS = 48
CONCURRENT = 6


def _post(gateway_url: str, index: int) -> httpx.Response:
    body = completion_body(f"Request {index}: the history of Paris is", LONG_TOKENS, stream=index % 2 == 1)
    return httpx.post(f"{gateway_url}/v1/completions", json=body, timeout=300)


def _stream_text(response: httpx.Response) -> str:
    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            text += chunk["choices"][0]["text"]
    return text


def test_over_admission_gets_503_with_retry_after_and_admitted_requests_finish_exactly(
    overload_cluster: OverloadCluster,
) -> None:
    first_shard = overload_cluster.shard_addresses[0]
    before = shard_stats(first_shard)
    assert before.kv_budget_tokens > 0  # the coordinator's KV reservation reached the first shard
    most_active = 0
    stop_watching = threading.Event()

    def watch() -> None:
        nonlocal most_active
        while not stop_watching.is_set():
            most_active = max(most_active, shard_stats(first_shard).active_requests)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            futures = [pool.submit(_post, overload_cluster.gateway_url, index) for index in range(CONCURRENT)]
            responses = [future.result() for future in futures]
    finally:
        stop_watching.set()
        watcher.join(timeout=10)

    assert overload_cluster.exited() is None
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [response for response in responses if response.status_code == 503]
    admitted = [(index, response) for index, response in enumerate(responses) if response.status_code == 200]
    assert len(refused) >= 1 and len(admitted) >= 2, statuses  # one ran, one waited, the rest were refused
    for response in refused:
        assert response.headers["Retry-After"].isdigit()
        assert response.headers["content-type"].startswith("application/json")  # also for stream: true
        error = response.json()["error"]
        assert error["code"] == "overloaded"
        assert error["type"] == "server_error"
    assert most_active <= 1  # the first shard never ran more than its limit
    after = shard_stats(first_shard)
    assert after.rejected_requests - before.rejected_requests == len(refused)

    idle = wait_until_idle(overload_cluster.shard_addresses)
    assert [(s.active_requests, s.kv_cache_bytes, s.reserved_kv_tokens) for s in idle] == [(0, 0, 0)] * len(idle)
    for index, response in admitted:
        text = _stream_text(response) if index % 2 == 1 else response.json()["choices"][0]["text"]
        alone = complete(overload_cluster.gateway_url, f"Request {index}: the history of Paris is", LONG_TOKENS)
        assert text == alone


def test_a_client_disconnecting_mid_stream_frees_kv_on_every_shard(overload_cluster: OverloadCluster) -> None:
    wait_until_idle(overload_cluster.shard_addresses)
    # Counting goes on for a long time: the stream is still running when the client leaves.
    body = completion_body("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", 400, stream=True)
    stats: list[shard_pb2.ShardStats] = []
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{overload_cluster.gateway_url}/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = (line for line in response.iter_lines() if line.startswith("data: {"))
        for received, _ in enumerate(events):
            if received == 4:
                stats = [shard_stats(address) for address in overload_cluster.shard_addresses]
                break
    # Leaving the block closed the connection mid-stream.
    # While it streamed, every shard held its KV cache.
    assert [(s.active_requests, s.kv_cache_bytes > 0) for s in stats] == [(1, True)] * len(stats), stats
    idle = wait_until_idle(overload_cluster.shard_addresses, timeout_seconds=30)
    assert [(s.active_requests, s.kv_cache_bytes, s.reserved_kv_tokens) for s in idle] == [(0, 0, 0)] * len(idle)
    assert overload_cluster.exited() is None
    assert complete(overload_cluster.gateway_url)  # and the next request works
