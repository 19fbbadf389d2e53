"""What the Raft node offers the rest of the coordinator (its timings, its refusal, its view of
replicas) and what it is given: the transport to its peers, as a protocol (`RaftPeer`), so the node
never builds a gRPC channel itself and tests can hand it any transport. (The state machine it
replicates is the other thing it is given: state_machine.py.)"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from coordinator.raft.messages import AppendReply, AppendRequest, SnapshotRequest
from coordinator.raft.rules import VoteRequest
from coordinator.raft.state_machine import R, RecordCodec, S


@dataclass(frozen=True)
class RaftTimings:
    heartbeat_seconds: float = 0.2
    election_timeout_seconds: tuple[float, float] = (1.5, 3.0)
    lease_seconds: float = 1.2
    """Shorter than the minimum election timeout, during which followers refuse other candidates."""
    rpc_timeout_seconds: float = 1.0


DEFAULT_TIMINGS = RaftTimings()


@dataclass(frozen=True)
class ReplicaPosition:
    replica_id: str
    role: str
    term: int
    log_index: int
    commit_index: int


class NotLeaderError(Exception):
    """This replica cannot take commands now; `leader` is where to send them ("" if unknown)."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader; leader is {leader or 'unknown'}")
        self.leader = leader


class RaftPeer(Protocol[S, R]):
    """One peer replica as the node calls it; every call returns None when the peer cannot be reached."""

    async def request_vote(self, request: VoteRequest) -> tuple[int, bool] | None: ...

    async def append_entries(self, request: AppendRequest[R]) -> AppendReply | None: ...

    async def install_snapshot(self, request: SnapshotRequest[S]) -> int | None: ...

    async def close(self) -> None: ...


PeerConnector = Callable[[str, float, RecordCodec[S, R]], RaftPeer[S, R]]
"""Opens the transport to a peer at an address, with a per-call timeout in seconds, sending records
and states as the codec encodes them."""
