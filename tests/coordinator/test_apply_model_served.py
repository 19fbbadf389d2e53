"""apply(ModelServed): adds the model with its wanted instances, and ends an earlier unserve."""

import pytest
from pydantic import ValidationError

from services.cluster.events import ModelServed, ModelUnserved
from services.cluster.state import ClusterState
from services.kernel.ids import ModelId
from tests.coordinator.builders import MODEL_ID, apply_next, fields_other_than, populated_state, tiny_model

pytestmark = pytest.mark.unit


def test_model_served_adds_the_model_and_its_instances() -> None:
    model = tiny_model("second")

    after = apply_next(ClusterState(), ModelServed(model=model, instances=2))

    assert after.models == {ModelId("second"): model}
    assert after.served_instances == {ModelId("second"): 2}
    assert after.last_index == 1


def test_model_served_keeps_the_other_models_and_their_instances() -> None:
    before = populated_state()

    after = apply_next(before, ModelServed(model=tiny_model("second"), instances=1))

    assert set(after.models) == {MODEL_ID, ModelId("second")}
    assert after.instances == before.instances


def test_model_served_again_replaces_the_instance_count() -> None:
    before = apply_next(ClusterState(), ModelServed(model=tiny_model("second"), instances=1))

    after = apply_next(before, ModelServed(model=tiny_model("second"), instances=3))

    assert after.served_instances == {ModelId("second"): 3}


def test_model_served_after_an_unserve_is_no_longer_unserved() -> None:
    unserved = apply_next(populated_state(), ModelUnserved(model_id=MODEL_ID))

    after = apply_next(unserved, ModelServed(model=tiny_model(), instances=1))

    assert after.unserved_models == ()
    assert MODEL_ID in after.models


def test_model_served_changes_only_models_and_instance_counts() -> None:
    before = populated_state()

    after = apply_next(before, ModelServed(model=tiny_model("second"), instances=1))

    changed = ("models", "served_instances")
    assert fields_other_than(after, *changed) == fields_other_than(before, *changed)


def test_model_served_refuses_fewer_than_one_instance() -> None:
    with pytest.raises(ValidationError):
        ModelServed(model=tiny_model(), instances=0)


def test_model_served_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ModelServed(model=tiny_model("second"), instances=1))

    assert before.model_dump() == snapshot
