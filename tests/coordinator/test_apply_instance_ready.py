"""apply(InstanceReady): the instance's status becomes ready; its stages and message stay."""

import pytest

from services.cluster.events import InstanceReady, StageLoaded
from services.kernel.ids import InstanceId, ShardId
from tests.coordinator.builders import INSTANCE_ID, apply_next, fields_other_than, populated_state

pytestmark = pytest.mark.unit


def test_instance_ready_sets_only_the_status() -> None:
    state = populated_state()
    for shard in ("shard-a", "shard-b"):
        state = apply_next(state, StageLoaded(instance_id=INSTANCE_ID, shard_id=ShardId(shard)))

    after = apply_next(state, InstanceReady(instance_id=INSTANCE_ID))

    assert after.instances[INSTANCE_ID] == state.instances[INSTANCE_ID].model_copy(update={"status": "ready"})


def test_instance_ready_leaves_shards_models_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, InstanceReady(instance_id=INSTANCE_ID))

    assert fields_other_than(after, "instances") == fields_other_than(before, "instances")


def test_instance_ready_leaves_other_instances_equal() -> None:
    state = populated_state()
    other = state.instances[INSTANCE_ID].model_copy(update={"instance_id": InstanceId("tiny@9")})
    state = state.model_copy(update={"instances": {**state.instances, InstanceId("tiny@9"): other}})

    after = apply_next(state, InstanceReady(instance_id=INSTANCE_ID))

    assert after.instances[InstanceId("tiny@9")] == other


def test_instance_ready_for_an_unknown_instance_only_advances_the_index() -> None:
    before = populated_state()

    after = apply_next(before, InstanceReady(instance_id=InstanceId("gone@1")))

    assert after == before.model_copy(update={"last_index": before.last_index + 1})


def test_instance_ready_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, InstanceReady(instance_id=INSTANCE_ID))

    assert before.model_dump() == snapshot
