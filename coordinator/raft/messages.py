"""Raft RPC messages as plain frozen dataclasses, and their protobuf conversions (the only place).

Records and states travel as the state machine's JSON (`RecordCodec`), as they are stored. A request
that does not decode (a malformed record) raises `MalformedRaftMessageError`, which a call answers
INVALID_ARGUMENT.
"""

from dataclasses import dataclass
from typing import Generic

from coordinator.raft.rules import VoteRequest
from coordinator.raft.state_machine import R, RecordCodec, S
from coordinator.raft.storage import LogEntry, Snapshot
from services.kernel.status_errors import InvalidArgumentError
from strata_wire import raft_pb2


class MalformedRaftMessageError(InvalidArgumentError):
    """Log entries or a snapshot from a peer that do not decode."""


@dataclass(frozen=True)
class AppendRequest(Generic[R]):
    term: int
    leader_id: str
    prev_log_index: int
    prev_log_term: int
    entries: tuple[LogEntry[R], ...]
    leader_commit: int
    voters: tuple[str, ...]


@dataclass(frozen=True)
class AppendReply:
    term: int
    success: bool
    last_log_index: int


@dataclass(frozen=True)
class SnapshotRequest(Generic[S]):
    term: int
    leader_id: str
    snapshot: Snapshot[S]
    voters: tuple[str, ...]


def vote_request_to_pb(request: VoteRequest) -> raft_pb2.RequestVoteRequest:
    return raft_pb2.RequestVoteRequest(
        term=request.term,
        candidate_id=request.candidate_id,
        last_log_index=request.last_log_index,
        last_log_term=request.last_log_term,
        pre_vote=request.pre_vote,
    )


def vote_request_from_pb(message: raft_pb2.RequestVoteRequest) -> VoteRequest:
    return VoteRequest(
        message.term, message.candidate_id, message.last_log_index, message.last_log_term, message.pre_vote
    )


def vote_reply_to_pb(term: int, granted: bool) -> raft_pb2.RequestVoteReply:
    return raft_pb2.RequestVoteReply(term=term, vote_granted=granted)


def entry_to_pb(entry: LogEntry[R], codec: RecordCodec[S, R]) -> raft_pb2.LogEntry:
    return raft_pb2.LogEntry(index=entry.index, term=entry.term, record_json=codec.encode_record(entry.record))


def entry_from_pb(message: raft_pb2.LogEntry, codec: RecordCodec[S, R]) -> LogEntry[R]:
    record = codec.decode_record(message.record_json)
    if record.index != message.index:
        raise ValueError(f"entry {message.index} carries the record of event {record.index}")
    return LogEntry(term=message.term, record=record)


def append_to_pb(request: AppendRequest[R], codec: RecordCodec[S, R]) -> raft_pb2.AppendEntriesRequest:
    return raft_pb2.AppendEntriesRequest(
        term=request.term,
        leader_id=request.leader_id,
        prev_log_index=request.prev_log_index,
        prev_log_term=request.prev_log_term,
        entries=[entry_to_pb(entry, codec) for entry in request.entries],
        leader_commit=request.leader_commit,
        voters=list(request.voters),
    )


def append_from_pb(message: raft_pb2.AppendEntriesRequest, codec: RecordCodec[S, R]) -> AppendRequest[R]:
    try:
        entries = tuple(entry_from_pb(entry, codec) for entry in message.entries)
    except ValueError as error:  # includes pydantic's ValidationError of a malformed record
        raise MalformedRaftMessageError(f"malformed log entries: {error}") from error
    return AppendRequest(
        term=message.term,
        leader_id=message.leader_id,
        prev_log_index=message.prev_log_index,
        prev_log_term=message.prev_log_term,
        entries=entries,
        leader_commit=message.leader_commit,
        voters=tuple(message.voters),
    )


def append_reply_to_pb(reply: AppendReply) -> raft_pb2.AppendEntriesReply:
    return raft_pb2.AppendEntriesReply(term=reply.term, success=reply.success, last_log_index=reply.last_log_index)


def snapshot_to_pb(request: SnapshotRequest[S], codec: RecordCodec[S, R]) -> raft_pb2.InstallSnapshotRequest:
    return raft_pb2.InstallSnapshotRequest(
        term=request.term,
        leader_id=request.leader_id,
        last_included_index=request.snapshot.last_index,
        last_included_term=request.snapshot.last_term,
        state_json=codec.encode_state(request.snapshot.state),
        voters=list(request.voters),
    )


def snapshot_from_pb(message: raft_pb2.InstallSnapshotRequest, codec: RecordCodec[S, R]) -> SnapshotRequest[S]:
    try:
        state = codec.decode_state(message.state_json)
        snapshot = Snapshot(last_index=message.last_included_index, last_term=message.last_included_term, state=state)
    except ValueError as error:  # includes pydantic's ValidationError
        raise MalformedRaftMessageError(f"malformed snapshot: {error}") from error
    return SnapshotRequest(
        term=message.term, leader_id=message.leader_id, snapshot=snapshot, voters=tuple(message.voters)
    )


def snapshot_reply_to_pb(term: int) -> raft_pb2.InstallSnapshotReply:
    return raft_pb2.InstallSnapshotReply(term=term)
