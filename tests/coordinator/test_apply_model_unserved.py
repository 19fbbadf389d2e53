"""apply(ModelUnserved): drops the model and remembers the unserve; its instances are the planner's to remove."""

import pytest

from services.cluster.events import ModelServed, ModelUnserved
from services.cluster.state import ClusterState
from services.kernel.ids import ModelId
from tests.coordinator.builders import MODEL_ID, apply_next, fields_other_than, populated_state, tiny_model

pytestmark = pytest.mark.unit


def test_model_unserved_drops_the_model_and_keeps_its_instances() -> None:
    before = populated_state()

    after = apply_next(before, ModelUnserved(model_id=MODEL_ID))

    assert after.models == {}
    assert after.unserved_models == (MODEL_ID,)
    # Removing the instances is the planner's next move (it tells the log, in order).
    assert after.instances == before.instances


def test_model_unserved_drops_the_instance_count_and_the_placed_mark() -> None:
    served = apply_next(ClusterState(), ModelServed(model=tiny_model("second"), instances=2))
    placed = served.model_copy(update={"placed_models": (ModelId("second"),)})

    after = apply_next(placed, ModelUnserved(model_id=ModelId("second")))

    assert after.served_instances == {}
    assert after.placed_models == ()


def test_model_unserved_twice_records_it_once() -> None:
    once = apply_next(populated_state(), ModelUnserved(model_id=MODEL_ID))

    twice = apply_next(once, ModelUnserved(model_id=MODEL_ID))

    assert twice.unserved_models == (MODEL_ID,)


def test_model_unserved_of_an_unknown_model_only_records_it() -> None:
    before = populated_state()

    after = apply_next(before, ModelUnserved(model_id=ModelId("never-served")))

    assert fields_other_than(after, "unserved_models") == fields_other_than(before, "unserved_models")


def test_model_unserved_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ModelUnserved(model_id=MODEL_ID))

    assert before.model_dump() == snapshot
