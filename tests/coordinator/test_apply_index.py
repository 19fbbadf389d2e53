"""apply's log discipline: each event's index is exactly one past the state's last index."""

import pytest

from services.cluster.apply import EventIndexError, apply
from services.cluster.events import IndexedEvent, ShardRegistered
from services.cluster.state import ClusterState
from tests.coordinator.builders import populated_state, shard_server

pytestmark = pytest.mark.unit

EVENT = ShardRegistered(shard=shard_server("shard-c"))


def test_each_applied_event_advances_last_index_by_one() -> None:
    state = ClusterState()
    for index in range(1, 6):
        state = apply(state, IndexedEvent(index=index, event=EVENT))
        assert state.last_index == index


def test_a_gap_in_the_log_raises() -> None:
    state = populated_state()

    with pytest.raises(EventIndexError, match=f"event {state.last_index + 2} cannot follow event {state.last_index}"):
        apply(state, IndexedEvent(index=state.last_index + 2, event=EVENT))


def test_a_repeated_event_raises() -> None:
    state = populated_state()

    with pytest.raises(EventIndexError):
        apply(state, IndexedEvent(index=state.last_index, event=EVENT))


def test_an_older_event_raises() -> None:
    state = populated_state()

    with pytest.raises(EventIndexError):
        apply(state, IndexedEvent(index=1, event=EVENT))


def test_the_first_event_must_have_index_one() -> None:
    with pytest.raises(EventIndexError):
        apply(ClusterState(), IndexedEvent(index=0, event=EVENT))


def test_a_refused_event_leaves_the_state_unchanged() -> None:
    state = populated_state()
    snapshot = state.model_dump()

    with pytest.raises(EventIndexError):
        apply(state, IndexedEvent(index=state.last_index + 5, event=EVENT))

    assert state.model_dump() == snapshot


def test_event_index_error_is_a_value_error() -> None:
    # Callers that map ValueError to a bad-request status keep working.
    assert issubclass(EventIndexError, ValueError)
