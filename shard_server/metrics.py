"""A shard server's Prometheus metrics, read at scrape time from the counters it already keeps.

A scrape asks the stage worker for a fresh `StageStats` between batches (`StageWorker.fresh_stats`,
the snapshot GetStats reports), and reads the admission gate's and the ring links' counters; the
collector runs on the metrics server's thread, never on the event loop or the model thread. Counters
of the first shard (prefix hits, replays, hop overheads) stay 0 on the others.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from services.kernel.ids import ShardId
from services.models.model_fetch import FetchedBytes
from services.platform.metrics_server import new_registry
from shard_server.admission import AdmissionStats
from shard_server.ring_link import RingTraffic
from shard_server.stage_state import BATCH_ROWS_BOUNDS, StageStats

HOP_OVERHEAD_QUANTILES = (0.5, 0.9, 0.99)
"""Quantiles of the recent per-hop overheads (the first shard keeps the last 1024 steps)."""


@dataclass(frozen=True)
class ShardMetricsSnapshot:
    """What one scrape reports: the stage's counters, admission, ring traffic."""

    shard_id: ShardId
    stage: StageStats
    admission: AdmissionStats
    ring: RingTraffic
    fetched: FetchedBytes = field(default_factory=FetchedBytes)
    """Model file bytes fetched since start, from peers and from the Hub."""


class ShardCollector(Collector):
    def __init__(self, snapshot: Callable[[], ShardMetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        stage, admission, ring = snapshot.stage, snapshot.admission, snapshot.ring
        info = GaugeMetricFamily(
            "strata_shard_stage",
            "1, labelled with the stage this shard holds (no sample while it holds none).",
            labels=["shard_id", "instance_id", "start_layer", "end_layer"],
        )
        if stage.instance_id is not None:
            info.add_metric([snapshot.shard_id, stage.instance_id, str(stage.start_layer), str(stage.end_layer)], 1)
        yield info
        yield _gauge(
            "strata_shard_requests_running", "Requests admitted and running (first shard).", admission.active_requests
        )
        yield _gauge(
            "strata_shard_requests_waiting", "Requests waiting for KV room (first shard).", admission.waiting_requests
        )
        yield _counter(
            "strata_shard_requests_rejected",
            "Requests refused at admission (queue full, wait expired, too large).",
            admission.rejected_requests,
        )
        yield _gauge("strata_shard_stage_requests", "Requests whose KV cache this shard holds.", stage.active_requests)
        yield _gauge(
            "strata_shard_kv_reserved_tokens",
            "KV tokens reserved by admitted requests against the budget (first shard).",
            admission.reserved_tokens,
        )
        budget = GaugeMetricFamily(
            "strata_shard_kv_budget_tokens", "KV budget of admission, in tokens (no sample when unlimited)."
        )
        if admission.kv_budget_tokens is not None:
            budget.add_metric([], admission.kv_budget_tokens)
        yield budget
        yield _gauge("strata_shard_kv_cache_bytes", "Bytes of the running requests' KV caches.", stage.kv_cache_bytes)
        yield _gauge("strata_shard_prefix_cache_bytes", "Bytes of stored prompt prefixes.", stage.prefix_cache_bytes)
        yield _counter(
            "strata_shard_prefix_cache_hits", "Requests that started from a stored prompt prefix.", stage.prefix_hits
        )
        yield _counter(
            "strata_shard_prefix_cache_reused_tokens",
            "Prompt tokens not computed again thanks to a stored prefix.",
            stage.reused_prompt_tokens,
        )
        yield _counter("strata_shard_steps", "Batches run through this shard's layers.", stage.steps)
        yield _batch_rows(stage)
        yield _counter(
            "strata_shard_compute_seconds", "Time spent computing batches (forward, sampling).", stage.compute_seconds
        )
        yield _counter(
            "strata_shard_replayed_tokens",
            "Journal tokens fed again for recovering requests (first shard).",
            stage.replayed_tokens,
        )
        yield _counter(
            "strata_shard_replay_divergences",
            "Replayed steps whose sampled token differed from the journal's (0 with exact compute).",
            stage.replay_divergences,
        )
        yield _hop_overhead(stage)
        yield SummaryMetricFamily(
            "strata_shard_token_round_trip_seconds",
            "First shard: from launching a request's step to its token coming back round the ring.",
            count_value=stage.ring_samples,
            sum_value=stage.ring_seconds,
        )
        yield _counter("strata_shard_ring_sent_messages", "Ring messages sent to the next shard.", ring.sent_messages)
        yield _counter(
            "strata_shard_ring_sent_bytes", "Bytes of ring messages sent to the next shard.", ring.sent_bytes
        )
        yield _counter(
            "strata_shard_ring_received_messages",
            "Ring messages received from the previous shard.",
            ring.received_messages,
        )
        yield _counter(
            "strata_shard_ring_received_bytes",
            "Bytes of ring messages received from the previous shard.",
            ring.received_bytes,
        )
        fetched = CounterMetricFamily(
            "strata_shard_model_fetched_bytes",
            "Model file bytes fetched since start, by source (peers' stores, or the Hub by range reads).",
            labels=["source"],
        )
        fetched.add_metric(["peers"], snapshot.fetched.from_peers)
        fetched.add_metric(["hub"], snapshot.fetched.from_hub)
        yield fetched


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _batch_rows(stage: StageStats) -> HistogramMetricFamily:
    counts = stage.batch_rows_buckets or (0,) * (len(BATCH_ROWS_BOUNDS) + 1)
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip([*(str(float(bound)) for bound in BATCH_ROWS_BOUNDS), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        "strata_shard_batch_rows",
        "Rows (tokens of every request) per batch this shard ran.",
        buckets=buckets,
        sum_value=stage.batched_rows,
    )


def _hop_overhead(stage: StageStats) -> SummaryMetricFamily:
    """Count and sum of every sample since start; quantiles of the recent ones (none before any)."""
    family = SummaryMetricFamily(
        "strata_shard_hop_overhead_seconds",
        "First shard of a ring: per-hop transport overhead of a step ((ring time - compute) / hops).",
        count_value=stage.hop_overhead_samples,
        sum_value=stage.hop_overhead_seconds,
    )
    if stage.hop_overheads:
        for quantile in HOP_OVERHEAD_QUANTILES:
            value = stage.hop_overhead_percentile(quantile * 100)
            family.samples.append(Sample(family.name, {"quantile": str(quantile)}, value))
    return family


def shard_registry(snapshot: Callable[[], ShardMetricsSnapshot]) -> CollectorRegistry:
    """This process's registry, holding the shard's collector."""
    registry = new_registry()
    registry.register(ShardCollector(snapshot))
    return registry
