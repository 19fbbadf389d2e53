"""apply(ShardLeaseExpired): the shard leaves the state; every instance with a stage on it fails."""

import pytest

from services.cluster.events import ShardLeaseExpired
from services.kernel.ids import InstanceId, ShardId
from tests.coordinator.builders import INSTANCE_ID, apply_next, fields_other_than, populated_state, shard_server

pytestmark = pytest.mark.unit


def test_the_shard_is_removed() -> None:
    after = apply_next(populated_state(), ShardLeaseExpired(shard_id=ShardId("shard-b")))

    assert list(after.shards) == [ShardId("shard-a")]


def test_an_instance_using_the_shard_fails_with_the_reason() -> None:
    after = apply_next(populated_state(), ShardLeaseExpired(shard_id=ShardId("shard-b")))

    instance = after.instances[INSTANCE_ID]
    assert instance.status == "failed"
    assert "shard-b" in instance.message
    assert "lease expired" in instance.message


def test_instances_on_other_shards_are_left_equal() -> None:
    state = populated_state()
    state = state.model_copy(update={"shards": {**state.shards, ShardId("shard-c"): shard_server("shard-c")}})

    after = apply_next(state, ShardLeaseExpired(shard_id=ShardId("shard-c")))

    assert after.instances == state.instances
    assert fields_other_than(after, "shards") == fields_other_than(state, "shards")


def test_an_unknown_shard_only_advances_the_index() -> None:
    before = populated_state()

    after = apply_next(before, ShardLeaseExpired(shard_id=ShardId("gone")))

    assert after == before.model_copy(update={"last_index": before.last_index + 1})


def test_every_instance_on_the_shard_fails() -> None:
    state = populated_state()
    other = state.instances[INSTANCE_ID].model_copy(update={"instance_id": InstanceId("tiny@9")})
    state = state.model_copy(update={"instances": {**state.instances, InstanceId("tiny@9"): other}})

    after = apply_next(state, ShardLeaseExpired(shard_id=ShardId("shard-a")))

    assert {instance.status for instance in after.instances.values()} == {"failed"}


def test_shard_lease_expired_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ShardLeaseExpired(shard_id=ShardId("shard-a")))

    assert before.model_dump() == snapshot
