"""apply(TermStarted): the leader's first entry sets the fencing term and the leader; nothing else."""

import pytest

from services.cluster.events import TermStarted
from tests.coordinator.builders import apply_next, fields_other_than, populated_state

pytestmark = pytest.mark.unit


def test_term_started_sets_term_and_leader() -> None:
    after = apply_next(populated_state(), TermStarted(term=7, leader="10.0.0.2:52416"))

    assert (after.term, after.leader) == (7, "10.0.0.2:52416")


def test_term_started_leaves_shards_models_and_instances_equal() -> None:
    before = populated_state()

    after = apply_next(before, TermStarted(term=2, leader="a:1"))

    assert fields_other_than(after, "term", "leader") == fields_other_than(before, "term", "leader")


def test_term_started_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, TermStarted(term=2, leader="a:1"))

    assert before.model_dump() == snapshot
