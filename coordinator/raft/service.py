"""The Raft gRPC service: decode, one call into the node, encode."""

from typing import Generic

import grpc

from coordinator.raft.messages import (
    append_from_pb,
    append_reply_to_pb,
    snapshot_from_pb,
    snapshot_reply_to_pb,
    vote_reply_to_pb,
    vote_request_from_pb,
)
from coordinator.raft.node import RaftNode
from coordinator.raft.state_machine import R, S
from strata_wire import raft_pb2, raft_pb2_grpc


class RaftService(raft_pb2_grpc.RaftServicer, Generic[S, R]):
    def __init__(self, node: RaftNode[S, R]) -> None:
        self._node = node

    async def RequestVote(
        self, request: raft_pb2.RequestVoteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.RequestVoteReply:
        term, granted = self._node.handle_request_vote(vote_request_from_pb(request))
        return vote_reply_to_pb(term, granted)

    async def AppendEntries(
        self, request: raft_pb2.AppendEntriesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.AppendEntriesReply:
        return append_reply_to_pb(self._node.handle_append_entries(append_from_pb(request, self._node.machine)))

    async def InstallSnapshot(
        self, request: raft_pb2.InstallSnapshotRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> raft_pb2.InstallSnapshotReply:
        return snapshot_reply_to_pb(self._node.handle_install_snapshot(snapshot_from_pb(request, self._node.machine)))
