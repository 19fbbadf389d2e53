"""EventFollower: applies streamed events in order, starts from snapshots, and asks again after a gap.
The last test follows a real replica through a kill -9 and restart."""

import asyncio
import time
from pathlib import Path

import pytest

from services.cluster.event_follower import EventFollower
from services.cluster.events import IndexedEvent, ShardRegistered
from services.cluster.state import ClusterState
from services.kernel.ids import ShardId
from strata_wire import coordinator_pb2
from tests.coordinator.builders import shard_server
from tests.coordinator.replica_processes import CommandClient, ReplicaSet, get_state, wait_for_leader


def event(index: int) -> coordinator_pb2.WatchedEvent:
    record = IndexedEvent(index=index, event=ShardRegistered(shard=shard_server(f"s{index}")))
    return coordinator_pb2.WatchedEvent(index=index, record_json=record.model_dump_json().encode())


@pytest.mark.unit
def test_events_apply_in_order_and_repeats_are_ignored() -> None:
    follower = EventFollower(["unused:1"])

    assert all(follower.take(event(index)) for index in (1, 2, 2, 3))

    assert follower.state.last_index == 3
    assert list(follower.state.shards) == [ShardId("s1"), ShardId("s2"), ShardId("s3")]


@pytest.mark.unit
def test_a_gap_is_refused_so_the_stream_restarts_from_what_is_missing() -> None:
    follower = EventFollower(["unused:1"])
    follower.take(event(1))

    assert not follower.take(event(3))
    assert follower.state.last_index == 1


@pytest.mark.unit
def test_a_snapshot_replaces_an_older_state() -> None:
    follower = EventFollower(["unused:1"])
    follower.take(event(1))
    snapshot = ClusterState(last_index=40, applied_commands={"client": 7})

    follower.take(coordinator_pb2.WatchedEvent(index=40, state_json=snapshot.model_dump_json().encode()))

    assert follower.state == snapshot
    assert follower.take(event(41))
    assert follower.state.last_index == 41


@pytest.mark.process
@pytest.mark.timeout(180)
def test_a_follower_catches_up_from_a_snapshot_and_survives_a_replica_restart(tmp_path: Path) -> None:
    replicas = ReplicaSet.create(tmp_path, 1, ("--snapshot-every", "5"))
    address = replicas.addresses[0]

    def send_commands(client_id: str, count: int) -> None:
        client = CommandClient(client_id, [address])
        client.start()
        client.wait_for_acknowledged(count, timeout_seconds=60)
        client.stopping.set()
        client.join(timeout=30)

    def leader_state() -> ClusterState:
        state = get_state(address)
        assert state is not None
        return ClusterState(last_index=state.last_index, applied_commands=dict(state.applied_commands))

    async def caught_up(follower: EventFollower, timeout_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            expected = await asyncio.to_thread(leader_state)
            state = follower.state
            if (state.last_index, state.applied_commands) == (expected.last_index, expected.applied_commands):
                return
            await follower.wait_for_change(0.5)
        raise TimeoutError(f"follower at {follower.state.last_index} never caught up:\n{replicas.logs()}")

    async def scenario() -> None:
        await asyncio.to_thread(replicas.start_all)
        await asyncio.to_thread(wait_for_leader, replicas)
        await asyncio.to_thread(send_commands, "before", 12)
        follower = EventFollower([address])
        following = asyncio.create_task(follower.run())
        try:
            await caught_up(follower)
            replicas.kill(0)
            replicas.start(0)
            await asyncio.to_thread(replicas.wait_serving, 0)
            await asyncio.to_thread(send_commands, "after", 3)
            await caught_up(follower)
            assert follower.reconnects >= 1
            # The client may slip in one more command before it stops: at least, never fewer.
            assert follower.state.applied_commands["before"] >= 12
            assert follower.state.applied_commands["after"] >= 3
        finally:
            following.cancel()

    try:
        asyncio.run(asyncio.wait_for(scenario(), timeout=150))
    finally:
        replicas.stop_all()
