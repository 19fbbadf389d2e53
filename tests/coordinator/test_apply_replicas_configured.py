"""apply(ReplicasConfigured): the membership (voters, learners) is replaced; nothing else changes."""

import pytest

from services.cluster.events import ReplicasConfigured
from services.cluster.state import ClusterState
from tests.coordinator.builders import apply_next, fields_other_than, populated_state

pytestmark = pytest.mark.unit


def test_voters_and_learners_are_replaced() -> None:
    state = apply_next(populated_state(), ReplicasConfigured(voters=("a:1", "b:1"), learners=("c:1",)))

    after = apply_next(state, ReplicasConfigured(voters=("a:1", "b:1", "c:1")))

    assert (after.voters, after.learners) == (("a:1", "b:1", "c:1"), ())


def test_the_rest_of_the_state_is_left_equal() -> None:
    before = populated_state()

    after = apply_next(before, ReplicasConfigured(voters=("a:1",)))

    assert fields_other_than(after, "voters", "learners") == fields_other_than(before, "voters", "learners")


def test_membership_survives_a_snapshot_round_trip() -> None:
    state = apply_next(populated_state(), ReplicasConfigured(voters=("a:1", "b:1"), learners=("c:1",)))

    assert ClusterState.model_validate_json(state.model_dump_json()) == state


def test_replicas_configured_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, ReplicasConfigured(voters=("a:1",)))

    assert before.model_dump() == snapshot
