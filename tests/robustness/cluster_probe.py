"""Small probes of the overload cluster: shard counters, health, one ordinary completion."""

import time

import httpx
from grpc_health.v1 import health_pb2

from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import shard_pb2, shard_pb2_grpc

PROMPT = "The capital of France is"


def shard_stats(address: str) -> shard_pb2.ShardStats:
    with cluster_sync_channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).GetStats(shard_pb2.GetStatsRequest(), timeout=30)


def grpc_serving(address: str) -> bool:
    with cluster_sync_channel(address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=10)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_idle(addresses: tuple[str, ...], timeout_seconds: float = 60.0) -> list[shard_pb2.ShardStats]:
    """Polls until no shard holds a request, KV cache or reservation; returns the last counters."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        stats = [shard_stats(address) for address in addresses]
        busy = any(s.active_requests or s.kv_cache_bytes or s.reserved_kv_tokens or s.waiting_requests for s in stats)
        if not busy or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def completion_body(prompt: str = PROMPT, max_tokens: int = 8, stream: bool = False) -> dict[str, object]:
    return {
        "model": EMBEDDED_MODEL_ID,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def complete(gateway_url: str, prompt: str = PROMPT, max_tokens: int = 8) -> str:
    """One greedy completion; retried while the cluster is still busy (503) from an earlier test."""
    deadline = time.monotonic() + 120
    while True:
        response = httpx.post(f"{gateway_url}/v1/completions", json=completion_body(prompt, max_tokens), timeout=120)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(float(response.headers.get("Retry-After", "1")))
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["text"]
    assert isinstance(text, str)
    return text
