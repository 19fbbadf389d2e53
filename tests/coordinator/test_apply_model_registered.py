"""apply(ModelRegistered): adds or replaces one model spec, nothing else."""

import pytest

from services.cluster.events import ModelRegistered
from services.cluster.state import ClusterState
from services.kernel.ids import ModelId
from tests.coordinator.builders import MODEL_ID, apply_next, fields_other_than, populated_state, tiny_model

pytestmark = pytest.mark.unit


def test_model_registered_adds_the_model_to_an_empty_state() -> None:
    model = tiny_model()

    after = apply_next(ClusterState(), ModelRegistered(model=model))

    assert after.models == {MODEL_ID: model}
    assert after.last_index == 1


def test_model_registered_keeps_the_other_models() -> None:
    before = populated_state()
    other = tiny_model("other", num_layers=2)

    after = apply_next(before, ModelRegistered(model=other))

    assert after.models == {**before.models, ModelId("other"): other}


def test_model_registered_again_replaces_the_spec() -> None:
    before = populated_state()
    resized = tiny_model(num_layers=6)

    after = apply_next(before, ModelRegistered(model=resized))

    assert after.models == {MODEL_ID: resized}


def test_model_registered_leaves_shards_instances_and_term_equal() -> None:
    # Re-registering a model does not touch its running instance.
    before = populated_state()

    after = apply_next(before, ModelRegistered(model=tiny_model(num_layers=6)))

    assert fields_other_than(after, "models") == fields_other_than(before, "models")


def test_model_registered_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ModelRegistered(model=tiny_model("other")))

    assert before.model_dump() == snapshot
