"""The leader's loop for one follower: send what it lacks (or a heartbeat), report the answer."""

import asyncio
import contextlib
import time
from typing import Protocol

from coordinator.raft.interface import RaftPeer
from coordinator.raft.messages import AppendRequest, SnapshotRequest
from coordinator.raft.state_machine import R, S
from coordinator.raft.storage import RaftStorage

MAX_ENTRIES_PER_APPEND = 128


class ReplicatingLeader(Protocol[S, R]):
    """What a leader's replication loop reads from and reports to its node (RaftNode is one)."""

    @property
    def replica_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def current_term(self) -> int: ...

    @property
    def voters(self) -> tuple[str, ...]: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def storage(self) -> RaftStorage[S, R]: ...

    @property
    def heartbeat_seconds(self) -> float: ...

    def leader_view(self, voter: str) -> tuple[RaftPeer[S, R], int, asyncio.Event]: ...

    def record_ack(
        self, voter: str, term: int, sent_at: float, reply_term: int, match: int | None, hint: int
    ) -> None: ...


async def replicate_to(node: ReplicatingLeader[S, R], voter: str, term: int) -> None:
    """Runs while `node` leads in `term`; cancelled when it steps down."""
    while node.role == "leader" and node.current_term == term:
        peer, next_index, wake = node.leader_view(voter)
        wake.clear()
        sent_at = time.monotonic()
        if next_index <= node.storage.snapshot.last_index:
            request = snapshot_request(node)
            reply_term = await peer.install_snapshot(request)
            if reply_term is not None:
                node.record_ack(voter, term, sent_at, reply_term, request.snapshot.last_index, 0)
            else:
                await _wait(wake, node)
            continue
        append = append_request(node, next_index)
        reply = await peer.append_entries(append)
        if reply is None:
            await _wait(wake, node)
            continue
        match = append.prev_log_index + len(append.entries) if reply.success else None
        node.record_ack(voter, term, sent_at, reply.term, match, reply.last_log_index)
        if reply.success and not append.entries:
            await _wait(wake, node)
        # After entries or a refusal, go straight on with what remains.


async def _wait(wake: asyncio.Event, node: ReplicatingLeader[S, R]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), node.heartbeat_seconds)


def snapshot_request(node: ReplicatingLeader[S, R]) -> SnapshotRequest[S]:
    return SnapshotRequest(node.current_term, node.replica_id, node.storage.snapshot, node.voters)


def append_request(node: ReplicatingLeader[S, R], next_index: int) -> AppendRequest[R]:
    """What the follower lacks from `next_index` on (at most a batch), after the entry it must hold."""
    storage = node.storage
    prev = next_index - 1
    return AppendRequest(
        term=node.current_term,
        leader_id=node.replica_id,
        prev_log_index=prev,
        prev_log_term=storage.term_at(prev),
        entries=tuple(storage.entries_from(next_index, MAX_ENTRIES_PER_APPEND)),
        leader_commit=node.commit_index,
        voters=node.voters,
    )
