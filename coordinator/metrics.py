"""A coordinator replica's Prometheus metrics: its Raft view and the cluster it coordinates.

Read at scrape time (on the metrics server's thread) from a `CoordinatorSnapshot`: a few attribute
reads of the Raft node and the replicated state, which the event loop replaces but never mutates.
Nothing is counted on the hot path but lease expiries (`ShardLeases.expiries`).
"""

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict

from coordinator.replica import CoordinatorReplica
from services.platform.metrics_server import new_registry


class CoordinatorSnapshot(BaseModel):
    """What a scrape reports, read at once."""

    model_config = ConfigDict(frozen=True, strict=True)

    replica_id: str
    term: int
    commit_index: int
    last_log_index: int
    role: str
    leader: str
    """Replica id of the leader this replica knows; "" when none."""
    voters: int
    learners: int
    shard_lease_expiries: int
    registered_shards: int
    instances_by_status: dict[str, int]


def replica_snapshot(replica: CoordinatorReplica) -> CoordinatorSnapshot:
    node = replica.node
    state = node.state
    return CoordinatorSnapshot(
        replica_id=node.replica_id,
        term=node.current_term,
        commit_index=node.commit_index,
        last_log_index=node.storage.last_index,
        role=str(node.role),
        leader=node.leader_id,
        voters=len(node.voters),
        learners=len(node.learners),
        shard_lease_expiries=replica.shard_lease_expiries,
        registered_shards=len(state.shards),
        instances_by_status=dict(Counter(instance.status for instance in state.instances.values())),
    )


INSTANCE_STATUSES = ("loading", "ready", "failed")


class CoordinatorCollector(Collector):
    def __init__(self, snapshot: Callable[[], CoordinatorSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield _gauge("strata_coordinator_raft_term", "Raft term this replica knows.", snapshot.term)
        yield _gauge(
            "strata_coordinator_raft_commit_index", "Highest log index known committed.", snapshot.commit_index
        )
        yield _gauge(
            "strata_coordinator_raft_last_log_index", "Last log index fsynced on this replica.", snapshot.last_log_index
        )
        yield _gauge(
            "strata_coordinator_raft_is_leader",
            "1 while this replica is the leader, else 0.",
            snapshot.role == "leader",
        )
        leader = GaugeMetricFamily(
            "strata_coordinator_raft_leader",
            "1, labelled with the leader this replica knows (no sample while it knows none).",
            labels=["leader"],
        )
        if snapshot.leader:
            leader.add_metric([snapshot.leader], 1)
        yield leader
        role = GaugeMetricFamily("strata_coordinator_raft_role", "1 for this replica's Raft role.", labels=["role"])
        role.add_metric([snapshot.role], 1)
        yield role
        yield _gauge("strata_coordinator_raft_voters", "Voting replicas of the cluster.", snapshot.voters)
        yield _gauge(
            "strata_coordinator_raft_learners", "Replicas receiving the log without a vote.", snapshot.learners
        )
        yield CounterMetricFamily(
            "strata_coordinator_shard_lease_expiries",
            "Shard servers this replica removed because their lease expired.",
            value=snapshot.shard_lease_expiries,
        )
        yield _gauge("strata_coordinator_shards", "Shard servers registered in the state.", snapshot.registered_shards)
        instances = GaugeMetricFamily(
            "strata_coordinator_model_instances", "Model instances in the state, by status.", labels=["status"]
        )
        for status in sorted({*INSTANCE_STATUSES, *snapshot.instances_by_status}):
            instances.add_metric([status], snapshot.instances_by_status.get(status, 0))
        yield instances


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def coordinator_registry(snapshot: Callable[[], CoordinatorSnapshot]) -> CollectorRegistry:
    """This process's registry, holding the replica's collector."""
    registry = new_registry()
    registry.register(CoordinatorCollector(snapshot))
    return registry
