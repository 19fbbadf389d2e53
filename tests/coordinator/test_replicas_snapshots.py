"""Snapshots over real processes: the on-disk log stays bounded however long commands flow, and a
replica that was down while the log was compacted catches up from the leader's snapshot."""

import time
from pathlib import Path

import pytest

from coordinator.raft.storage import LOG_FILE
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc
from tests.coordinator.replica_processes import CommandClient, ReplicaSet, wait_for_leader, wait_until_converged

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

SNAPSHOT_EVERY = 20
COMMANDS = 120


def log_entry_count(replicas: ReplicaSet, number: int) -> int:
    path = replicas.root / f"home-{number}" / "coordinator" / LOG_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_log_stays_bounded_and_a_restarted_replica_installs_the_snapshot(tmp_path: Path) -> None:
    replicas = ReplicaSet.create(tmp_path, 3, ("--snapshot-every", str(SNAPSHOT_EVERY)))
    client = CommandClient("snapshot-client", replicas.addresses)
    try:
        replicas.start_all()
        leader = wait_for_leader(replicas)
        lagging = (leader + 1) % 3
        replicas.kill(lagging)
        client.start()
        largest_log = 0
        deadline = time.monotonic() + 150
        while client.acknowledged_count() < COMMANDS and time.monotonic() < deadline:
            largest_log = max(largest_log, *(log_entry_count(replicas, number) for number in replicas.live()))
            time.sleep(0.05)
        client.stopping.set()
        client.join(timeout=30)
        assert client.acknowledged_count() >= COMMANDS

        # Entries after the last snapshot, plus the few appended while one was being taken.
        assert largest_log < 2 * SNAPSHOT_EVERY

        replicas.start(lagging)
        replicas.wait_serving(lagging)
        states = wait_until_converged(replicas)
        assert "installing the leader's snapshot" in replicas.processes[lagging].log_path.read_text()
        assert all([s.shard_id for s in state.shards] == [s.shard_id for s in states[0].shards] for state in states)
        assert all(dict(state.applied_commands) == dict(states[0].applied_commands) for state in states)
        assert states[0].applied_commands[client.client_id] >= max(client.acknowledged)

        with cluster_sync_channel(replicas.addresses[lagging]) as channel:
            stream = coordinator_pb2_grpc.CoordinatorStub(channel).WatchEvents(
                coordinator_pb2.WatchEventsRequest(from_index=1), timeout=30
            )
            first = next(iter(stream))
            stream.cancel()
        assert first.state_json and first.index > 1
    finally:
        client.stopping.set()
        replicas.stop_all()
