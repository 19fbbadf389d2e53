"""apply with a command origin: a retried (client id, sequence) applies once and keeps its log slot."""

import pytest

from services.cluster.apply import apply
from services.cluster.events import CommandOrigin, IndexedEvent, ShardRegistered
from services.cluster.state import ClusterState
from services.kernel.ids import ShardId
from tests.coordinator.builders import populated_state, shard_server

pytestmark = pytest.mark.unit


def apply_command(state: ClusterState, shard: str, client: str, sequence: int) -> ClusterState:
    event = ShardRegistered(shard=shard_server(shard))
    origin = CommandOrigin(client_id=client, sequence=sequence)
    return apply(state, IndexedEvent(index=state.last_index + 1, event=event, origin=origin))


def test_a_command_applies_and_records_its_sequence() -> None:
    after = apply_command(populated_state(), "shard-c", "client-1", 1)

    assert "shard-c" in after.shards
    assert after.applied_commands == {"client-1": 1}


def test_a_retried_command_only_advances_the_index() -> None:
    once = apply_command(populated_state(), "shard-c", "client-1", 1)
    retried_with_other_content = apply_command(once, "shard-d", "client-1", 1)

    assert retried_with_other_content == once.model_copy(update={"last_index": once.last_index + 1})


def test_an_older_sequence_is_a_retry_too() -> None:
    state = apply_command(populated_state(), "shard-c", "client-1", 5)

    after = apply_command(state, "shard-d", "client-1", 4)

    assert "shard-d" not in after.shards


def test_clients_are_deduplicated_separately() -> None:
    state = apply_command(populated_state(), "shard-c", "client-1", 1)

    after = apply_command(state, "shard-d", "client-2", 1)

    assert "shard-d" in after.shards
    assert after.applied_commands == {"client-1": 1, "client-2": 1}


def test_the_dedup_table_survives_a_snapshot_round_trip() -> None:
    state = apply_command(populated_state(), "shard-c", "client-1", 3)

    restored = ClusterState.model_validate_json(state.model_dump_json())

    assert restored == state
    assert apply_command(restored, "shard-d", "client-1", 3).shards == state.shards


def test_events_without_an_origin_are_never_deduplicated() -> None:
    state = populated_state()
    event = ShardRegistered(shard=shard_server("shard-c", memory=1))

    after = apply(state, IndexedEvent(index=state.last_index + 1, event=event))

    assert after.shards[ShardId("shard-c")].available_memory_bytes == 1
    assert after.applied_commands == {}
