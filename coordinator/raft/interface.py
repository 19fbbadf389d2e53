"""What the Raft node offers the rest of the coordinator (its timings, its refusal, its view of
replicas) and what it is given: the transport to its peers, as a protocol (`RaftPeer`), so the node
never builds a gRPC channel itself and tests can hand it any transport."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from coordinator.raft.messages import AppendReply, AppendRequest, SnapshotRequest
from coordinator.raft.rules import VoteRequest


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


class RaftPeer(Protocol):
    """One peer replica as the node calls it; every call returns None when the peer cannot be reached."""

    async def request_vote(self, request: VoteRequest) -> tuple[int, bool] | None: ...

    async def append_entries(self, request: AppendRequest) -> AppendReply | None: ...

    async def install_snapshot(self, request: SnapshotRequest) -> int | None: ...

    async def close(self) -> None: ...


PeerConnector = Callable[[str, float], RaftPeer]
"""Opens the transport to a peer at an address, with a per-call timeout in seconds."""
