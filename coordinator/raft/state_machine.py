"""What the Raft node needs from the state machine it replicates, as protocols: the node stays generic
over its state `S` and its log record `R`, and imports nothing of the state it carries.

A record knows its log index and a state the index it applied last, the membership it holds and the
term and leader whose first entry it applied last (`ReplicatedState`): membership takes effect when its
record is applied, and a leader takes commands once its own term's first record is. The state
machine applies a committed record, builds the records the node writes itself (a new term's first
entry, a membership change), and turns records and states into JSON bytes for the log on disk and the
wire (`RecordCodec`).
"""

from typing import Protocol, TypeVar


class IndexedRecord(Protocol):
    """A log record: it carries the index of its log slot."""

    @property
    def index(self) -> int: ...


class ReplicatedState(Protocol):
    """What the node reads of the state it replicates."""

    @property
    def last_index(self) -> int:
        """The index of the record applied last (0 before any)."""
        ...

    @property
    def term(self) -> int:
        """The term of the leader whose first record was applied last."""
        ...

    @property
    def leader(self) -> str:
        """That leader's replica id."""
        ...

    @property
    def voters(self) -> tuple[str, ...]:
        """The voting members the last membership record set (empty before any)."""
        ...

    @property
    def learners(self) -> tuple[str, ...]:
        """The members that receive the log without voting."""
        ...


S = TypeVar("S", bound=ReplicatedState)
R = TypeVar("R", bound=IndexedRecord)


class RecordCodec(Protocol[S, R]):
    """Records and states as JSON bytes (one JSON value each), for storage and the wire. A decode
    raises ValueError (pydantic's ValidationError is one) when the bytes do not hold one."""

    def initial_state(self) -> S:
        """The state before any record applies (index 0)."""
        ...

    def encode_record(self, record: R) -> bytes: ...

    def decode_record(self, data: bytes) -> R: ...

    def encode_state(self, state: S) -> bytes: ...

    def decode_state(self, data: bytes) -> S: ...


class StateMachine(RecordCodec[S, R], Protocol[S, R]):
    """The replicated state machine: pure functions of records and states."""

    def apply(self, state: S, record: R) -> S:
        """The state after a committed `record`, whose index follows `state.last_index`."""
        ...

    def term_started(self, index: int, term: int, leader: str) -> R:
        """A new leader's first record of its term (Raft's no-op), at `index`."""
        ...

    def configured(self, index: int, voters: tuple[str, ...], learners: tuple[str, ...]) -> R:
        """The record that sets the membership, at `index`."""
        ...
