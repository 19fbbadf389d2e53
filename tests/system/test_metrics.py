"""Prometheus metrics of a real `strata run` cluster: every service's `/metrics` (addresses from
GetState) parses, and one completion moves the counters by exactly what it did."""

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.kernel.settings import home_sharing_models
from tests.processes import ServiceProcess, cluster_state, free_port, start_strata, wait_for_http_ok

pytestmark = [pytest.mark.process, pytest.mark.model]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HTTP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class MeteredCluster:
    gateway_url: str
    coordinator_metrics: str
    first_shard_metrics: str
    last_shard_metrics: str


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


@pytest.fixture(scope="module")
def metered_cluster(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredCluster]:
    with home_sharing_models(embedded_home) as home:
        gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port(consecutive=2)
        arguments = ["run", "--port", str(gateway_port), "--coordinator-port", str(coordinator_port)]
        arguments += ["--shard-port", str(shard_port), "--metrics-port", "0"]
        process: ServiceProcess = start_strata("strata-run", arguments, home, tmp_path_factory.mktemp("metrics-logs"))
        try:
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            wait_for_http_ok(process, f"{gateway_url}/health", timeout_seconds=240)
            state = cluster_state(f"127.0.0.1:{coordinator_port}")
            [own] = [replica for replica in state.replicas if replica.replica_id == state.leader]
            instance = next(instance for instance in state.instances if instance.status == "ready")
            metrics_of = {shard.shard_id: shard.metrics_address for shard in state.shards}
            assert own.metrics_address and all(metrics_of.values()), state
            yield MeteredCluster(
                gateway_url=gateway_url,
                coordinator_metrics=f"http://{own.metrics_address}/metrics",
                first_shard_metrics=f"http://{metrics_of[instance.stages[0].shard_id]}/metrics",
                last_shard_metrics=f"http://{metrics_of[instance.stages[-1].shard_id]}/metrics",
            )
        except BaseException:
            print(process.log_tail())
            raise
        finally:
            process.stop()


def complete(gateway_url: str) -> dict[str, int]:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{gateway_url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=180) as response:
        usage: dict[str, int] = json.loads(response.read())["usage"]
    return usage


@pytest.mark.timeout(600)
def test_a_completion_moves_every_service_metrics(metered_cluster: MeteredCluster) -> None:
    cluster = metered_cluster
    urls = {
        "gateway": f"{cluster.gateway_url}/metrics",
        "coordinator": cluster.coordinator_metrics,
        "first shard": cluster.first_shard_metrics,
        "last shard": cluster.last_shard_metrics,
    }
    before = {name: scrape(url) for name, url in urls.items()}
    coordinator = before["coordinator"]
    assert coordinator[("strata_coordinator_raft_is_leader", ())] == 1
    assert coordinator[("strata_coordinator_raft_term", ())] >= 1
    assert coordinator[("strata_coordinator_shards", ())] == 2
    assert coordinator[("strata_coordinator_model_instances", (("status", "ready"),))] == 1

    usage = complete(cluster.gateway_url)
    after = {name: scrape(url) for name, url in urls.items()}

    gateway_before, gateway_after = before["gateway"], after["gateway"]
    assert moved(gateway_before, gateway_after, "strata_gateway_prompt_tokens_total") == usage["prompt_tokens"]
    assert moved(gateway_before, gateway_after, "strata_gateway_completion_tokens_total") == usage["completion_tokens"]
    assert moved(gateway_before, gateway_after, "strata_gateway_time_to_first_token_seconds_count") == 1
    assert usage["completion_tokens"] > 1
    assert moved(gateway_before, gateway_after, "strata_gateway_time_per_output_token_seconds_count") == 1
    chat_ok = (("route", "/v1/chat/completions"), ("status", "200"))
    assert moved(gateway_before, gateway_after, "strata_gateway_http_requests_total", chat_ok) == 1
    assert gateway_after[("strata_gateway_requests_in_flight", ())] == 0

    for shard in ("first shard", "last shard"):
        assert moved(before[shard], after[shard], "strata_shard_steps_total") >= usage["completion_tokens"]
        assert moved(before[shard], after[shard], "strata_shard_batch_rows_count") >= usage["completion_tokens"]
        assert moved(before[shard], after[shard], "strata_shard_batch_rows_sum") >= usage["prompt_tokens"]
    first_before, first_after = before["first shard"], after["first shard"]
    assert moved(first_before, first_after, "strata_shard_hop_overhead_seconds_count") >= 1
    assert moved(first_before, first_after, "strata_shard_ring_sent_bytes_total") > 0
    assert moved(first_before, first_after, "strata_shard_ring_received_bytes_total") > 0
    assert first_after[("strata_shard_requests_running", ())] == 0
    assert first_after[("strata_shard_kv_budget_tokens", ())] > 0
