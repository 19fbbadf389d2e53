"""plan(..., instances_per_model=N): each model kept at N instances on shard servers of their own."""

import pytest

from coordinator.planner import Action, CannotPlace, PlaceInstance, RemoveInstance, plan
from services.cluster.events import (
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    NodeDrainRequested,
    ShardLeaseExpired,
    ShardRegistered,
)
from services.cluster.state import ClusterState
from services.kernel.ids import ShardId
from tests.coordinator.builders import apply_all, apply_next, shard_server, tiny_model

pytestmark = pytest.mark.unit

TWO = 2


def cluster(shard_count: int, memory: int = 10_000) -> ClusterState:
    """Shards shard-0.. and the tiny model (4 layers of 100 bytes), nothing placed."""
    return apply_all(
        ClusterState(),
        [
            *(ShardRegistered(shard=shard_server(f"shard-{index}", memory)) for index in range(shard_count)),
            ModelRegistered(model=tiny_model()),
        ],
    )


def placed(state: ClusterState, action: Action | None, *, ready: bool = True) -> ClusterState:
    """Applies a PlaceInstance as the leader does (and marks it ready)."""
    assert isinstance(action, PlaceInstance)
    event = InstancePlaced(
        instance_id=action.instance_id, model_id=action.model_id, num_layers=4, stages=action.placement.stages
    )
    state = apply_next(state, event)
    return apply_next(state, InstanceReady(instance_id=action.instance_id)) if ready else state


def shards_of(action: Action | None) -> list[str]:
    assert isinstance(action, PlaceInstance)
    return [stage.shard_id for stage in action.placement.stages]


def test_two_instances_over_two_shards_take_one_shard_each() -> None:
    state = cluster(2)

    first = plan(state, minimum_shards=2, instances_per_model=TWO)
    assert shards_of(first) == ["shard-0"]
    state = placed(state, first)
    second = plan(state, minimum_shards=2, instances_per_model=TWO)
    assert shards_of(second) == ["shard-1"]
    state = placed(state, second)

    assert plan(state, minimum_shards=2, instances_per_model=TWO) is None


def test_three_shards_split_two_and_one() -> None:
    state = cluster(3)

    first = plan(state, minimum_shards=1, instances_per_model=TWO)
    assert shards_of(first) == ["shard-0", "shard-1"]
    second = plan(placed(state, first), minimum_shards=1, instances_per_model=TWO)
    assert shards_of(second) == ["shard-2"]


def test_a_model_too_big_for_one_shard_gets_one_pipeline_over_both() -> None:
    state = cluster(2, memory=300)  # the 400-byte model needs both

    first = plan(state, minimum_shards=2, instances_per_model=TWO)
    assert shards_of(first) == ["shard-0", "shard-1"]

    assert plan(placed(state, first), minimum_shards=2, instances_per_model=TWO) is None


def test_a_lost_instance_is_placed_again_on_free_shards_only() -> None:
    state = cluster(3)
    for _ in range(TWO):
        state = placed(state, plan(state, minimum_shards=1, instances_per_model=TWO))
    # Instance two sits on shard-2 alone; shard-2 dies, its instance fails and is removed.
    state = apply_next(state, ShardLeaseExpired(shard_id=ShardId("shard-2")))
    failed = plan(state, minimum_shards=1, instances_per_model=TWO)
    assert isinstance(failed, RemoveInstance)
    state = apply_next(state, InstanceRemoved(instance_id=failed.instance_id))
    assert plan(state, minimum_shards=1, instances_per_model=TWO) is None  # no free shard: one serves

    state = apply_next(state, ShardRegistered(shard=shard_server("shard-3")))
    again = plan(state, minimum_shards=1, instances_per_model=TWO)
    assert shards_of(again) == ["shard-3"]


def test_a_shard_joining_a_full_set_of_instances_moves_nothing() -> None:
    state = cluster(2)
    for _ in range(TWO):
        state = placed(state, plan(state, minimum_shards=1, instances_per_model=TWO))

    state = apply_next(state, ShardRegistered(shard=shard_server("shard-9")))

    assert plan(state, minimum_shards=1, instances_per_model=TWO) is None


def test_the_second_instance_does_not_wait_for_the_first_to_load() -> None:
    first = plan(cluster(2), minimum_shards=1, instances_per_model=TWO)
    state = placed(cluster(2), first, ready=False)

    second = plan(state, minimum_shards=1, instances_per_model=TWO)

    assert shards_of(second) == ["shard-1"]
    assert isinstance(first, PlaceInstance)
    assert isinstance(second, PlaceInstance)
    assert second.instance_id != first.instance_id


def test_with_every_shard_draining_the_refusal_says_none_is_registered() -> None:
    state = apply_all(
        cluster(2),
        [NodeDrainRequested(node_id=shard_server(f"shard-{index}").node_id) for index in range(TWO)],
    )

    for instances in (1, TWO):
        action = plan(state, minimum_shards=1, instances_per_model=instances)
        assert isinstance(action, CannotPlace)
        assert action.reason == "no shard server is registered"
