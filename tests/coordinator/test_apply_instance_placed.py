"""apply(InstancePlaced): records a new instance, loading, with its stages as assigned."""

import pytest

from services.cluster.events import InstancePlaced
from services.cluster.state import ClusterState, ModelInstance, StageAssignment
from services.kernel.ids import InstanceId, ShardId
from tests.coordinator.builders import (
    MODEL_ID,
    apply_next,
    fields_other_than,
    populated_state,
    two_stage_placement,
)

pytestmark = pytest.mark.unit


def test_instance_placed_records_a_loading_instance_with_assigned_stages() -> None:
    event = two_stage_placement(InstanceId("tiny@1"))

    after = apply_next(ClusterState(), event)

    assert after.instances == {
        InstanceId("tiny@1"): ModelInstance(
            instance_id=InstanceId("tiny@1"),
            model_id=MODEL_ID,
            num_layers=4,
            stages=event.stages,
            status="loading",
            message="",
            placed_term=1,
        )
    }
    assert all(stage.status == "assigned" for stage in after.instances[InstanceId("tiny@1")].stages)


def test_instance_placed_records_the_term_of_the_leader_that_placed_it() -> None:
    after = apply_next(ClusterState(term=7), two_stage_placement(InstanceId("tiny@1")))

    assert after.instances[InstanceId("tiny@1")].placed_term == 7


def test_instance_placed_keeps_the_other_instances() -> None:
    before = populated_state()
    event = InstancePlaced(
        instance_id=InstanceId("tiny@9"),
        model_id=MODEL_ID,
        num_layers=4,
        stages=(StageAssignment(shard_id=ShardId("shard-a"), start_layer=0, end_layer=4),),
    )

    after = apply_next(before, event)

    assert set(after.instances) == {*before.instances, InstanceId("tiny@9")}
    for instance_id, instance in before.instances.items():
        assert after.instances[instance_id] == instance


def test_instance_placed_leaves_shards_models_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, two_stage_placement(InstanceId("tiny@9")))

    assert fields_other_than(after, "instances") == fields_other_than(before, "instances")


def test_instance_placed_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, two_stage_placement(InstanceId("tiny@9")))

    assert before.model_dump() == snapshot


def test_instance_placed_remembers_the_model_was_placed_once() -> None:
    first = apply_next(ClusterState(), two_stage_placement(InstanceId("tiny@1")))
    second = apply_next(first, two_stage_placement(InstanceId("tiny@2")))

    assert first.placed_models == (MODEL_ID,)
    assert second.placed_models == (MODEL_ID,)
