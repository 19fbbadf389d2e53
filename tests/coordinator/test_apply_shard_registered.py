"""apply(ShardRegistered): adds or replaces one shard server; one that restarted (a new incarnation)
also fails the instances it held, since its stages died with the old process."""

import pytest
from pydantic import ValidationError

from services.cluster.events import ShardRegistered
from services.cluster.state import ClusterState
from services.kernel.ids import ShardId
from tests.coordinator.builders import (
    INSTANCE_ID,
    apply_all,
    apply_next,
    fields_other_than,
    populated_state,
    shard_server,
)

pytestmark = pytest.mark.unit


def test_shard_registered_adds_the_shard_to_an_empty_state() -> None:
    shard = shard_server("shard-a")

    after = apply_next(ClusterState(), ShardRegistered(shard=shard))

    assert after.shards == {ShardId("shard-a"): shard}
    assert after.last_index == 1


def test_shard_registered_keeps_the_other_shards() -> None:
    before = populated_state()
    shard = shard_server("shard-c", memory=5)

    after = apply_next(before, ShardRegistered(shard=shard))

    assert after.shards == {**before.shards, ShardId("shard-c"): shard}


def test_shard_registered_again_replaces_the_old_record() -> None:
    # A shard that restarts with more memory re-registers under the same id.
    before = populated_state()
    bigger = shard_server("shard-a", memory=99_999)

    after = apply_next(before, ShardRegistered(shard=bigger))

    assert after.shards[ShardId("shard-a")] == bigger
    assert len(after.shards) == len(before.shards)


def test_shard_registered_leaves_models_instances_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, ShardRegistered(shard=shard_server("shard-c")))

    assert fields_other_than(after, "shards") == fields_other_than(before, "shards")


def test_shard_registered_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ShardRegistered(shard=shard_server("shard-c")))

    assert before.model_dump() == snapshot


def test_cluster_state_refuses_assignment() -> None:
    # Frozen models are what keeps apply the only way to change state.
    state = ClusterState()
    with pytest.raises(ValidationError):
        state.last_index = 7


def test_a_shard_that_restarted_fails_the_instances_it_held() -> None:
    state = apply_all(
        populated_state(),
        [ShardRegistered(shard=shard_server("shard-b").model_copy(update={"incarnation": "first"}))],
    )

    after = apply_all(
        state, [ShardRegistered(shard=shard_server("shard-b").model_copy(update={"incarnation": "second"}))]
    )

    assert after.instances[INSTANCE_ID].status == "failed"
    assert "restarted" in after.instances[INSTANCE_ID].message
    assert after.shards[ShardId("shard-b")].incarnation == "second"


def test_an_unknown_incarnation_is_not_a_restart() -> None:
    state = apply_all(
        populated_state(),
        [ShardRegistered(shard=shard_server("shard-b").model_copy(update={"incarnation": "first"}))],
    )

    after = apply_all(state, [ShardRegistered(shard=shard_server("shard-b"))])

    assert after.instances[INSTANCE_ID].status == "loading"
