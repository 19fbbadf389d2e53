"""The cluster's event-sourced state as the state machine the Raft node replicates.

Its records are `IndexedEvent`s, its state `ClusterState`, and applying one is services.cluster's pure
`apply`; both are stored and sent to other replicas as their pydantic JSON (what `log.jsonl`,
`snapshot.json` and the Raft messages have always held). A new leader's first record is `TermStarted`
and a membership change `ReplicasConfigured`.
"""

from collections.abc import Callable
from typing import Final, TypeAlias

from coordinator.raft.node import RaftNode
from coordinator.raft.state_machine import StateMachine
from coordinator.raft.storage import LogEntry, RaftStorage, Snapshot
from services.cluster.apply import apply
from services.cluster.events import CommandOrigin, Event, IndexedEvent, ReplicasConfigured, TermStarted
from services.cluster.state import ClusterState


class ClusterLog:
    """The cluster's `StateMachine` (stateless: the state is the node's)."""

    def initial_state(self) -> ClusterState:
        return ClusterState()

    def apply(self, state: ClusterState, record: IndexedEvent) -> ClusterState:
        return apply(state, record)

    def term_started(self, index: int, term: int, leader: str) -> IndexedEvent:
        return IndexedEvent(index=index, event=TermStarted(term=term, leader=leader))

    def configured(self, index: int, voters: tuple[str, ...], learners: tuple[str, ...]) -> IndexedEvent:
        return IndexedEvent(index=index, event=ReplicasConfigured(voters=voters, learners=learners))

    def encode_record(self, record: IndexedEvent) -> bytes:
        return record.model_dump_json().encode()

    def decode_record(self, data: bytes) -> IndexedEvent:
        return IndexedEvent.model_validate_json(data)

    def encode_state(self, state: ClusterState) -> bytes:
        return state.model_dump_json().encode()

    def decode_state(self, data: bytes) -> ClusterState:
        return ClusterState.model_validate_json(data)


CLUSTER_LOG: Final[StateMachine[ClusterState, IndexedEvent]] = ClusterLog()

ClusterNode: TypeAlias = RaftNode[ClusterState, IndexedEvent]
ClusterStorage: TypeAlias = RaftStorage[ClusterState, IndexedEvent]
ClusterLogEntry: TypeAlias = LogEntry[IndexedEvent]
ClusterSnapshot: TypeAlias = Snapshot[ClusterState]


def command(event: Event, origin: CommandOrigin | None = None) -> Callable[[int], IndexedEvent]:
    """What a replica proposes for `event`: its record at whichever index the leader's log gives it."""
    return lambda index: IndexedEvent(index=index, event=event, origin=origin)
