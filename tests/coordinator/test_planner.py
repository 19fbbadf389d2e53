"""plan(state, minimum_shards): the first rule that fires returns the coordinator's next action."""

import pytest

from coordinator.placement import place
from coordinator.planner import CannotPlace, PlaceInstance, RemoveInstance, plan
from services.cluster.events import InstanceRemoved, ModelRegistered, ShardRegistered, StageFailed
from services.cluster.state import ClusterState
from services.kernel.ids import InstanceId, ModelId, ShardId
from tests.coordinator.builders import (
    INSTANCE_ID,
    MODEL_ID,
    apply_all,
    apply_next,
    populated_state,
    shard_server,
    tiny_model,
)

pytestmark = pytest.mark.unit


def state_with(shard_count: int, *, memory: int = 10_000, models: tuple[str, ...] = ("tiny",)) -> ClusterState:
    return apply_all(
        ClusterState(),
        [
            *(ShardRegistered(shard=shard_server(f"shard-{i}", memory)) for i in range(shard_count)),
            *(ModelRegistered(model=tiny_model(name)) for name in models),
        ],
    )


def test_an_empty_state_needs_nothing() -> None:
    assert plan(ClusterState(), minimum_shards=1) is None


def test_a_served_model_needs_nothing() -> None:
    assert plan(populated_state(), minimum_shards=2) is None


def test_shards_without_models_need_nothing() -> None:
    assert plan(state_with(3, models=()), minimum_shards=1) is None


def test_a_failed_instance_is_removed() -> None:
    state = apply_next(
        populated_state(), StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a"), message="oom")
    )

    assert plan(state, minimum_shards=2) == RemoveInstance(INSTANCE_ID)


def test_removing_a_failed_instance_comes_before_placing_a_model() -> None:
    state = apply_all(
        populated_state(),
        [
            ModelRegistered(model=tiny_model("another")),
            StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-b"), message="oom"),
        ],
    )

    assert plan(state, minimum_shards=1) == RemoveInstance(INSTANCE_ID)


def test_a_loading_instance_is_left_alone() -> None:
    # Loading is not failure: the instance keeps its model served.
    state = populated_state()
    assert state.instances[INSTANCE_ID].status == "loading"

    assert plan(state, minimum_shards=1) is None


@pytest.mark.parametrize("minimum_shards", [2, 3])
def test_a_model_waits_for_the_minimum_number_of_shards(minimum_shards: int) -> None:
    state = state_with(minimum_shards - 1)

    assert plan(state, minimum_shards) is None


@pytest.mark.parametrize("minimum_shards", [1, 2, 3])
def test_a_model_is_placed_once_the_minimum_number_of_shards_is_registered(minimum_shards: int) -> None:
    state = state_with(minimum_shards)

    action = plan(state, minimum_shards)

    assert isinstance(action, PlaceInstance)
    assert action.model_id == MODEL_ID
    shards = [state.shards[shard_id] for shard_id in sorted(state.shards)]
    assert action.placement == place(state.models[MODEL_ID], shards)


def test_a_minimum_of_zero_still_needs_one_shard() -> None:
    assert plan(state_with(0), minimum_shards=0) is None
    assert isinstance(plan(state_with(1), minimum_shards=0), PlaceInstance)


def test_placement_uses_every_registered_shard_sorted_by_id() -> None:
    # Registration order must not change the ring: replicas replaying the log agree either way.
    state = apply_all(
        ClusterState(),
        [
            ShardRegistered(shard=shard_server("shard-b")),
            ShardRegistered(shard=shard_server("shard-c")),
            ShardRegistered(shard=shard_server("shard-a")),
            ModelRegistered(model=tiny_model()),
        ],
    )

    action = plan(state, minimum_shards=2)

    assert isinstance(action, PlaceInstance)
    assert [stage.shard_id for stage in action.placement.stages] == ["shard-a", "shard-b", "shard-c"]


def test_a_model_that_cannot_fit_gives_cannot_place_with_the_reason() -> None:
    state = state_with(2, memory=150)

    action = plan(state, minimum_shards=2)

    assert isinstance(action, CannotPlace)
    assert action.model_id == MODEL_ID
    assert "tiny" in action.reason
    assert "400 bytes" in action.reason


def test_models_are_considered_in_id_order() -> None:
    state = state_with(1, models=("zeta", "alpha"))

    action = plan(state, minimum_shards=1)

    assert isinstance(action, PlaceInstance)
    assert action.model_id == ModelId("alpha")


def test_instance_ids_are_deterministic() -> None:
    # Every replica replaying the same log must choose the same id.
    first = plan(state_with(2), minimum_shards=2)
    second = plan(state_with(2), minimum_shards=2)

    assert isinstance(first, PlaceInstance)
    assert first == second
    # Two shards and one model make three events; the placement will be event 4.
    assert first.instance_id == InstanceId("tiny@4")


def test_instance_ids_differ_after_a_re_placement() -> None:
    # A removed instance's id is never reused, so late reports about it cannot touch its successor.
    state = populated_state()
    failed = apply_next(state, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a"), message="oom"))
    removed = apply_next(failed, InstanceRemoved(instance_id=INSTANCE_ID))

    action = plan(removed, minimum_shards=2)

    assert isinstance(action, PlaceInstance)
    assert action.instance_id != INSTANCE_ID
    assert action.instance_id == InstanceId(f"tiny@{removed.last_index + 1}")


def test_a_model_that_cannot_fit_does_not_block_one_that_can() -> None:
    state = apply_all(
        ClusterState(),
        [
            ShardRegistered(shard=shard_server("shard-a", 1_000)),
            ModelRegistered(model=tiny_model("a-huge", layer_bytes=10_000)),
            ModelRegistered(model=tiny_model("b-small", layer_bytes=10)),
        ],
    )

    action = plan(state, minimum_shards=1)

    assert isinstance(action, PlaceInstance)
    assert action.model_id == ModelId("b-small")


def test_after_a_lease_expiry_the_instance_is_removed_then_placed_on_the_remaining_shards() -> None:
    from services.cluster.events import ShardLeaseExpired

    state = apply_next(populated_state(), ShardLeaseExpired(shard_id=ShardId("shard-b")))

    removal = plan(state, minimum_shards=1)
    assert removal == RemoveInstance(INSTANCE_ID)
    state = apply_next(state, InstanceRemoved(instance_id=INSTANCE_ID))
    placement = plan(state, minimum_shards=1)
    assert isinstance(placement, PlaceInstance)
    assert [stage.shard_id for stage in placement.placement.stages] == [ShardId("shard-a")]


def test_an_instance_left_loading_by_a_dead_leader_is_removed_by_the_next_one() -> None:
    from services.cluster.events import TermStarted

    state = apply_next(populated_state(), TermStarted(term=2, leader="b:1"))

    assert plan(state, minimum_shards=1) == RemoveInstance(INSTANCE_ID)


def test_an_instance_loading_in_the_current_term_is_left_to_finish() -> None:
    assert plan(populated_state(), minimum_shards=2) is None


def drained_state() -> ClusterState:
    """The tiny model ready on shard-a + shard-b, a spare shard-c, and shard-b's node draining."""
    from services.cluster.events import InstanceReady, NodeDrainRequested

    state = apply_all(
        populated_state(),
        [ShardRegistered(shard=shard_server("shard-c")), InstanceReady(instance_id=INSTANCE_ID)],
    )
    return apply_next(state, NodeDrainRequested(node_id=shard_server("shard-b").node_id))


def test_a_drain_first_places_a_replacement_away_from_the_node() -> None:
    action = plan(drained_state(), minimum_shards=1)

    assert isinstance(action, PlaceInstance)
    assert ShardId("shard-b") not in {stage.shard_id for stage in action.placement.stages}


def test_a_drain_removes_the_old_instance_once_the_replacement_is_ready() -> None:
    from services.cluster.events import InstancePlaced, InstanceReady

    state = drained_state()
    action = plan(state, minimum_shards=1)
    assert isinstance(action, PlaceInstance)
    model = state.models[action.model_id]
    state = apply_next(
        state,
        InstancePlaced(
            instance_id=action.instance_id,
            model_id=action.model_id,
            num_layers=model.num_layers,
            stages=action.placement.stages,
        ),
    )
    assert plan(state, minimum_shards=1) is None  # the old one keeps serving while the new one loads

    state = apply_next(state, InstanceReady(instance_id=action.instance_id))

    assert plan(state, minimum_shards=1) == RemoveInstance(INSTANCE_ID)


def test_a_drain_with_nowhere_to_go_keeps_the_instance_and_says_why() -> None:
    from services.cluster.events import InstanceReady, NodeDrainRequested

    state = apply_next(populated_state(), InstanceReady(instance_id=INSTANCE_ID))
    for shard in ("shard-a", "shard-b"):
        state = apply_next(state, NodeDrainRequested(node_id=shard_server(shard).node_id))

    action = plan(state, minimum_shards=1)

    assert isinstance(action, CannotPlace)
    assert INSTANCE_ID in state.instances


def ready_on_two_shards() -> ClusterState:
    """The tiny model (4 layers) ready on shard-a [0, 2) and shard-b [2, 4)."""
    from services.cluster.events import InstanceReady

    return apply_next(populated_state(), InstanceReady(instance_id=INSTANCE_ID))


def test_the_minimum_does_not_block_re_placing_a_model_after_a_loss() -> None:
    from services.cluster.events import ShardLeaseExpired

    # Started with a minimum of two shards; one leaves: the model goes on the one that remains.
    state = apply_next(ready_on_two_shards(), ShardLeaseExpired(shard_id=ShardId("shard-b")))
    assert plan(state, minimum_shards=2) == RemoveInstance(INSTANCE_ID)
    state = apply_next(state, InstanceRemoved(instance_id=INSTANCE_ID))

    action = plan(state, minimum_shards=2)

    assert isinstance(action, PlaceInstance)
    assert [stage.shard_id for stage in action.placement.stages] == [ShardId("shard-a")]


def test_the_minimum_still_delays_a_models_first_placement_when_another_was_placed() -> None:
    state = apply_next(ready_on_two_shards(), ModelRegistered(model=tiny_model("another")))

    assert plan(state, minimum_shards=3) is None


def test_a_shard_that_joins_a_ready_instance_gets_it_re_placed_over_every_shard() -> None:
    # Six equal layers: 3 + 3 on two shards, 2 + 2 + 2 once a third one joins.
    state = apply_next(ready_on(2, num_layers=6), ShardRegistered(shard=shard_server("shard-2")))
    (instance_id,) = state.instances

    removal = plan(state, minimum_shards=3)

    assert isinstance(removal, RemoveInstance)
    assert removal.instance_id == instance_id
    assert "3 shard servers instead of 2" in removal.reason
    state = apply_next(state, InstanceRemoved(instance_id=instance_id))
    placement = plan(state, minimum_shards=3)
    assert isinstance(placement, PlaceInstance)
    assert [stage.shard_id for stage in placement.placement.stages] == ["shard-0", "shard-1", "shard-2"]


def test_a_loading_instance_is_not_re_placed_when_a_shard_joins() -> None:
    loading = state_with(2, models=())
    loading = apply_next(loading, ModelRegistered(model=tiny_model(num_layers=6)))
    action = plan(loading, minimum_shards=2)
    assert isinstance(action, PlaceInstance)
    from services.cluster.events import InstancePlaced

    placed = InstancePlaced(
        instance_id=action.instance_id, model_id=MODEL_ID, num_layers=6, stages=action.placement.stages
    )
    state = apply_all(loading, [placed, ShardRegistered(shard=shard_server("shard-9"))])

    assert plan(state, minimum_shards=1) is None


def ready_on(shard_count: int, num_layers: int) -> ClusterState:
    """A model of `num_layers` equal layers placed and ready on shard-0 .. shard-{shard_count - 1}."""
    from services.cluster.events import InstancePlaced, InstanceReady

    state = state_with(0, models=())
    state = apply_all(
        state,
        [
            *(ShardRegistered(shard=shard_server(f"shard-{i}")) for i in range(shard_count)),
            ModelRegistered(model=tiny_model(num_layers=num_layers)),
        ],
    )
    action = plan(state, minimum_shards=shard_count)
    assert isinstance(action, PlaceInstance)
    return apply_all(
        state,
        [
            InstancePlaced(
                instance_id=action.instance_id,
                model_id=MODEL_ID,
                num_layers=num_layers,
                stages=action.placement.stages,
            ),
            InstanceReady(instance_id=action.instance_id),
        ],
    )


@pytest.mark.parametrize(
    ("num_layers", "why"),
    [(2, "no layer left for a third shard"), (4, "four equal layers: the slowest stage keeps two")],
)
def test_a_joined_shard_that_cannot_speed_the_model_up_is_left_idle(num_layers: int, why: str) -> None:
    state = apply_next(ready_on(2, num_layers), ShardRegistered(shard=shard_server("shard-9")))

    assert plan(state, minimum_shards=2) is None, why


def test_a_joined_shard_too_small_for_a_stage_is_left_idle() -> None:
    state = apply_next(ready_on(2, num_layers=6), ShardRegistered(shard=shard_server("shard-9", memory=10)))

    assert plan(state, minimum_shards=1) is None
