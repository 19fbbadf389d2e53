"""apply(StageLoaded): marks one stage of one instance loaded; the instance stays loading."""

import pytest

from services.cluster.events import StageLoaded
from services.kernel.ids import InstanceId, ShardId
from tests.coordinator.builders import INSTANCE_ID, apply_next, fields_other_than, populated_state

pytestmark = pytest.mark.unit


def test_stage_loaded_marks_only_that_shards_stage() -> None:
    before = populated_state()

    after = apply_next(before, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId("shard-b")))

    stages = after.instances[INSTANCE_ID].stages
    assert [(stage.shard_id, stage.status) for stage in stages] == [("shard-a", "assigned"), ("shard-b", "loaded")]
    # Layer ranges are untouched.
    assert [(s.start_layer, s.end_layer) for s in stages] == [
        (s.start_layer, s.end_layer) for s in before.instances[INSTANCE_ID].stages
    ]


def test_stage_loaded_on_every_stage_does_not_make_the_instance_ready() -> None:
    # Readiness is its own event (InstanceReady), decided by the coordinator.
    state = populated_state()
    for shard in ("shard-a", "shard-b"):
        state = apply_next(state, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId(shard)))

    instance = state.instances[INSTANCE_ID]
    assert all(stage.status == "loaded" for stage in instance.stages)
    assert instance.status == "loading"
    assert instance.message == ""


def test_stage_loaded_leaves_shards_models_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a")))

    assert fields_other_than(after, "instances") == fields_other_than(before, "instances")


def test_stage_loaded_for_an_unknown_instance_only_advances_the_index() -> None:
    # A late report for an instance already removed is harmless.
    before = populated_state()

    after = apply_next(before, StageLoaded(instance_id=InstanceId("gone@1"), shard_id=ShardId("shard-a")))

    assert after == before.model_copy(update={"last_index": before.last_index + 1})


def test_stage_loaded_for_a_shard_outside_the_instance_changes_no_stage() -> None:
    before = populated_state()

    after = apply_next(before, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId("shard-z")))

    assert after.instances == before.instances


def test_stage_loaded_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a")))

    assert before.model_dump() == snapshot
