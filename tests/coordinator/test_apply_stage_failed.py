"""apply(StageFailed): marks the stage failed and the whole instance failed, with the shard's message."""

import pytest

from services.cluster.events import StageFailed, StageLoaded
from services.kernel.ids import InstanceId, ShardId
from tests.coordinator.builders import INSTANCE_ID, apply_next, fields_other_than, populated_state

pytestmark = pytest.mark.unit


def test_stage_failed_marks_the_stage_and_the_instance_failed() -> None:
    before = populated_state()

    after = apply_next(
        before, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-b"), message="out of memory")
    )

    instance = after.instances[INSTANCE_ID]
    assert [(stage.shard_id, stage.status) for stage in instance.stages] == [
        ("shard-a", "assigned"),
        ("shard-b", "failed"),
    ]
    assert instance.status == "failed"
    # The message names the shard, so an operator knows where to look.
    assert instance.message == "shard shard-b: out of memory"


def test_stage_failed_keeps_the_other_stages_status() -> None:
    state = populated_state()
    state = apply_next(state, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a")))

    after = apply_next(state, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-b"), message="boom"))

    assert [stage.status for stage in after.instances[INSTANCE_ID].stages] == ["loaded", "failed"]


def test_stage_failed_leaves_shards_models_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a"), message="boom"))

    assert fields_other_than(after, "instances") == fields_other_than(before, "instances")


def test_stage_failed_leaves_other_instances_equal() -> None:
    state = populated_state()
    other = state.instances[INSTANCE_ID].model_copy(update={"instance_id": InstanceId("tiny@9")})
    state = state.model_copy(update={"instances": {**state.instances, InstanceId("tiny@9"): other}})

    after = apply_next(state, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a"), message="boom"))

    assert after.instances[InstanceId("tiny@9")] == other


def test_stage_failed_for_an_unknown_instance_only_advances_the_index() -> None:
    before = populated_state()

    after = apply_next(before, StageFailed(instance_id=InstanceId("gone@1"), shard_id=ShardId("shard-a"), message="x"))

    assert after == before.model_copy(update={"last_index": before.last_index + 1})


def test_stage_failed_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, StageFailed(instance_id=INSTANCE_ID, shard_id=ShardId("shard-a"), message="boom"))

    assert before.model_dump() == snapshot


def test_a_failure_naming_a_shard_outside_the_instance_changes_nothing() -> None:
    state = populated_state()
    instance_id = next(iter(state.instances))
    failed = apply_next(state, StageFailed(instance_id=instance_id, shard_id=ShardId("not-a-stage"), message="lost"))
    assert failed.instances == state.instances
