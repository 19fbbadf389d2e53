"""What the Raft node offers the rest of the coordinator: its timings, its refusal, its view of replicas."""

from dataclasses import dataclass


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
