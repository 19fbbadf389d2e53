"""The shard's collector over fake snapshots: every counter it already keeps, as Prometheus parses it."""

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.kernel.ids import InstanceId, ShardId
from services.models.model_fetch import FetchedBytes
from shard_server.admission import AdmissionStats
from shard_server.metrics import ShardMetricsSnapshot, shard_registry
from shard_server.ring_link import RingTraffic
from shard_server.stage_state import BATCH_ROWS_BOUNDS, StageStats

pytestmark = pytest.mark.unit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(snapshot: ShardMetricsSnapshot) -> tuple[Samples, dict[str, str]]:
    """Samples by name and sorted labels, and each family's type."""
    families = list(text_string_to_metric_families(generate_latest(shard_registry(lambda: snapshot)).decode()))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return samples, {family.name: family.type for family in families}


def test_a_first_shard_serving_reports_its_counters() -> None:
    buckets = [0] * (len(BATCH_ROWS_BOUNDS) + 1)
    buckets[0], buckets[3], buckets[-1] = 5, 2, 1  # five 1-row steps, two of 5..8 rows, one above 512
    stage = StageStats(
        instance_id=InstanceId("inst-1"),
        start_layer=0,
        end_layer=18,
        active_requests=2,
        kv_cache_bytes=4096,
        steps=8,
        batched_rows=5 + 7 + 8 + 600,
        batch_rows_buckets=tuple(buckets),
        compute_seconds=1.5,
        ring_seconds=0.8,
        ring_samples=4,
        prefix_cache_bytes=1024,
        prefix_hits=3,
        reused_prompt_tokens=512,
        replayed_tokens=9,
        replay_divergences=0,
        hop_overheads=(0.001, 0.002, 0.003),
        hop_overhead_seconds=0.010,
        hop_overhead_samples=5,
    )
    admission = AdmissionStats(
        active_requests=2, waiting_requests=1, reserved_tokens=700, rejected_requests=4, kv_budget_tokens=8192
    )
    ring = RingTraffic(sent_messages=10, sent_bytes=5000, received_messages=6, received_bytes=300)
    fetched = FetchedBytes(from_peers=2048, from_hub=1 << 20)
    samples, types = scrape(ShardMetricsSnapshot(ShardId("node:1"), stage, admission, ring, fetched))
    stage_labels = (("end_layer", "18"), ("instance_id", "inst-1"), ("shard_id", "node:1"), ("start_layer", "0"))
    assert samples[("strata_shard_stage", stage_labels)] == 1
    assert samples[("strata_shard_requests_running", ())] == 2
    assert samples[("strata_shard_requests_waiting", ())] == 1
    assert samples[("strata_shard_requests_rejected_total", ())] == 4
    assert samples[("strata_shard_kv_reserved_tokens", ())] == 700
    assert samples[("strata_shard_kv_budget_tokens", ())] == 8192
    assert samples[("strata_shard_prefix_cache_hits_total", ())] == 3
    assert samples[("strata_shard_steps_total", ())] == 8
    assert types["strata_shard_batch_rows"] == "histogram"
    assert samples[("strata_shard_batch_rows_bucket", (("le", "1.0"),))] == 5
    assert samples[("strata_shard_batch_rows_bucket", (("le", "8.0"),))] == 7
    assert samples[("strata_shard_batch_rows_bucket", (("le", "512.0"),))] == 7
    assert samples[("strata_shard_batch_rows_bucket", (("le", "+Inf"),))] == 8
    assert samples[("strata_shard_batch_rows_count", ())] == 8
    assert samples[("strata_shard_batch_rows_sum", ())] == 620
    assert types["strata_shard_hop_overhead_seconds"] == "summary"
    assert samples[("strata_shard_hop_overhead_seconds_count", ())] == 5
    assert samples[("strata_shard_hop_overhead_seconds", (("quantile", "0.5"),))] == 0.002
    assert samples[("strata_shard_hop_overhead_seconds", (("quantile", "0.99"),))] == 0.003
    assert samples[("strata_shard_token_round_trip_seconds_sum", ())] == 0.8
    assert samples[("strata_shard_replayed_tokens_total", ())] == 9
    assert samples[("strata_shard_ring_sent_bytes_total", ())] == 5000
    assert samples[("strata_shard_ring_received_bytes_total", ())] == 300
    assert samples[("strata_shard_compute_seconds_total", ())] == 1.5
    assert samples[("strata_shard_model_fetched_bytes_total", (("source", "peers"),))] == 2048
    assert samples[("strata_shard_model_fetched_bytes_total", (("source", "hub"),))] == 1 << 20


def test_an_idle_shard_reports_zeros_and_no_stage() -> None:
    admission = AdmissionStats(
        active_requests=0, waiting_requests=0, reserved_tokens=0, rejected_requests=0, kv_budget_tokens=None
    )
    samples, _ = scrape(ShardMetricsSnapshot(ShardId("node:2"), StageStats(), admission, RingTraffic()))
    assert not any(name == "strata_shard_stage" for name, _ in samples)
    assert not any(name == "strata_shard_kv_budget_tokens" for name, _ in samples)
    assert samples[("strata_shard_batch_rows_count", ())] == 0
    assert samples[("strata_shard_hop_overhead_seconds_count", ())] == 0
    assert not any(name == "strata_shard_hop_overhead_seconds" for name, _ in samples)  # no quantile yet
