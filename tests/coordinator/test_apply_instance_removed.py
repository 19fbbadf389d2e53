"""apply(InstanceRemoved): drops one instance; the model stays registered for re-placement."""

import pytest

from services.cluster.events import InstanceRemoved
from services.kernel.ids import InstanceId
from tests.coordinator.builders import (
    INSTANCE_ID,
    MODEL_ID,
    apply_next,
    fields_other_than,
    populated_state,
    two_stage_placement,
)

pytestmark = pytest.mark.unit


def test_instance_removed_drops_the_instance() -> None:
    before = populated_state()

    after = apply_next(before, InstanceRemoved(instance_id=INSTANCE_ID))

    assert after.instances == {}
    assert MODEL_ID in after.models


def test_instance_removed_keeps_the_other_instances() -> None:
    state = apply_next(populated_state(), two_stage_placement(InstanceId("tiny@9")))

    after = apply_next(state, InstanceRemoved(instance_id=INSTANCE_ID))

    assert after.instances == {InstanceId("tiny@9"): state.instances[InstanceId("tiny@9")]}


def test_instance_removed_leaves_shards_models_and_term_equal() -> None:
    before = populated_state()

    after = apply_next(before, InstanceRemoved(instance_id=INSTANCE_ID))

    assert fields_other_than(after, "instances") == fields_other_than(before, "instances")


def test_instance_removed_for_an_unknown_instance_only_advances_the_index() -> None:
    # Removing twice (a retried command) is harmless.
    before = populated_state()

    after = apply_next(before, InstanceRemoved(instance_id=InstanceId("gone@1")))

    assert after == before.model_copy(update={"last_index": before.last_index + 1})


def test_instance_removed_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, InstanceRemoved(instance_id=INSTANCE_ID))

    assert before.model_dump() == snapshot
