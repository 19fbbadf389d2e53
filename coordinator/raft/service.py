"""The Raft gRPC service: decode, one call into the node, encode."""

import grpc

from coordinator.raft.messages import append_from_pb, snapshot_from_pb
from coordinator.raft.node import RaftNode
from coordinator.raft.rules import VoteRequest
from strata_wire import raft_pb2, raft_pb2_grpc


class RaftService(raft_pb2_grpc.RaftServicer):
    def __init__(self, node: RaftNode) -> None:
        self._node = node

    async def RequestVote(
        self, request: raft_pb2.RequestVoteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.RequestVoteReply:
        term, granted = self._node.handle_request_vote(
            VoteRequest(
                request.term, request.candidate_id, request.last_log_index, request.last_log_term, request.pre_vote
            )
        )
        return raft_pb2.RequestVoteReply(term=term, vote_granted=granted)

    async def AppendEntries(
        self, request: raft_pb2.AppendEntriesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.AppendEntriesReply:
        try:
            append = append_from_pb(request)
        except ValueError as error:  # includes pydantic's ValidationError of a malformed record
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed log entries: {error}")
            raise AssertionError("unreachable") from error
        reply = self._node.handle_append_entries(append)
        return raft_pb2.AppendEntriesReply(term=reply.term, success=reply.success, last_log_index=reply.last_log_index)

    async def InstallSnapshot(
        self, request: raft_pb2.InstallSnapshotRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.InstallSnapshotReply:
        try:
            snapshot = snapshot_from_pb(request)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed snapshot: {error}")
            raise AssertionError("unreachable") from error
        return raft_pb2.InstallSnapshotReply(term=self._node.handle_install_snapshot(snapshot))
