"""apply(NodeDrainRequested): the node is marked draining (once); a restart of its shard ends the drain."""

import pytest

from services.cluster.events import NodeDrainRequested, ShardRegistered
from services.kernel.ids import NodeId
from tests.coordinator.builders import apply_next, fields_other_than, populated_state, shard_server

pytestmark = pytest.mark.unit

NODE = NodeId("node-of-shard-b")


def test_the_node_is_marked_draining() -> None:
    after = apply_next(populated_state(), NodeDrainRequested(node_id=NODE))

    assert after.draining_nodes == (NODE,)


def test_draining_twice_is_the_same_as_once() -> None:
    once = apply_next(populated_state(), NodeDrainRequested(node_id=NODE))

    twice = apply_next(once, NodeDrainRequested(node_id=NODE))

    assert twice.draining_nodes == (NODE,)


def test_nothing_else_changes_until_the_planner_acts() -> None:
    before = populated_state()

    after = apply_next(before, NodeDrainRequested(node_id=NODE))

    assert fields_other_than(after, "draining_nodes") == fields_other_than(before, "draining_nodes")


def test_a_restarted_shard_of_the_node_ends_the_drain() -> None:
    state = apply_next(
        populated_state(), ShardRegistered(shard=shard_server("shard-b").model_copy(update={"incarnation": "one"}))
    )
    state = apply_next(state, NodeDrainRequested(node_id=NODE))

    after = apply_next(state, ShardRegistered(shard=shard_server("shard-b").model_copy(update={"incarnation": "two"})))

    assert after.draining_nodes == ()


def test_node_drain_requested_does_not_change_the_input_state() -> None:
    before = populated_state()
    snapshot = before.model_dump()

    apply_next(before, NodeDrainRequested(node_id=NODE))

    assert before.model_dump() == snapshot
