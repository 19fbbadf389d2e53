"""The coordinator's collector over fake snapshots, as Prometheus parses it."""

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorSnapshot, coordinator_registry
from coordinator.shard_leases import ShardLeases
from services.kernel.ids import ShardId

pytestmark = pytest.mark.unit


def scrape(snapshot: CoordinatorSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exposition = generate_latest(coordinator_registry(lambda: snapshot)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def snapshot(**changes: object) -> CoordinatorSnapshot:
    fields: dict[str, object] = {
        "replica_id": "127.0.0.1:52416",
        "term": 4,
        "commit_index": 17,
        "last_log_index": 18,
        "role": "leader",
        "leader": "127.0.0.1:52416",
        "voters": 3,
        "learners": 1,
        "shard_lease_expiries": 2,
        "registered_shards": 5,
        "instances_by_status": {"ready": 1, "loading": 2},
    }
    return CoordinatorSnapshot.model_validate({**fields, **changes})


def test_a_leader_reports_its_raft_view_and_the_cluster() -> None:
    samples = scrape(snapshot())
    assert samples[("strata_coordinator_raft_term", ())] == 4
    assert samples[("strata_coordinator_raft_commit_index", ())] == 17
    assert samples[("strata_coordinator_raft_last_log_index", ())] == 18
    assert samples[("strata_coordinator_raft_is_leader", ())] == 1
    assert samples[("strata_coordinator_raft_leader", (("leader", "127.0.0.1:52416"),))] == 1
    assert samples[("strata_coordinator_raft_role", (("role", "leader"),))] == 1
    assert samples[("strata_coordinator_raft_voters", ())] == 3
    assert samples[("strata_coordinator_shard_lease_expiries_total", ())] == 2
    assert samples[("strata_coordinator_shards", ())] == 5
    assert samples[("strata_coordinator_model_instances", (("status", "ready"),))] == 1
    assert samples[("strata_coordinator_model_instances", (("status", "loading"),))] == 2
    assert samples[("strata_coordinator_model_instances", (("status", "failed"),))] == 0


def test_a_follower_without_a_leader() -> None:
    samples = scrape(snapshot(role="follower", leader=""))
    assert samples[("strata_coordinator_raft_is_leader", ())] == 0
    assert not any(name == "strata_coordinator_raft_leader" for name, _ in samples)


def test_lease_expiries_are_counted_when_committed() -> None:
    leases = ShardLeases(lease_seconds=10.0)
    leases.renew(ShardId("a"), now=0.0)
    assert leases.expired([ShardId("a")], now=11.0) == [ShardId("a")]
    leases.expire(ShardId("a"))
    assert leases.expiries == 1
    assert leases.expired([ShardId("a")], now=11.0) == [ShardId("a")]  # forgotten: counts from leading_since
