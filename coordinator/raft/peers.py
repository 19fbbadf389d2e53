"""gRPC client for one peer replica: each call returns None when the peer cannot be reached."""

from typing import Generic

import grpc

from coordinator.raft.messages import (
    AppendReply,
    AppendRequest,
    SnapshotRequest,
    append_to_pb,
    snapshot_to_pb,
    vote_request_to_pb,
)
from coordinator.raft.rules import VoteRequest
from coordinator.raft.state_machine import R, RecordCodec, S
from services.platform.grpc_server import cluster_channel
from strata_wire import raft_pb2_grpc


class PeerClient(Generic[S, R]):
    def __init__(self, address: str, timeout_seconds: float, codec: RecordCodec[S, R]) -> None:
        self.address = address
        self._timeout = timeout_seconds
        self._codec = codec
        self._channel = cluster_channel(address)
        self._stub = raft_pb2_grpc.RaftStub(self._channel)

    async def request_vote(self, request: VoteRequest) -> tuple[int, bool] | None:
        try:
            reply = await self._stub.RequestVote(vote_request_to_pb(request), timeout=self._timeout)
        except grpc.aio.AioRpcError:
            return None
        return reply.term, reply.vote_granted

    async def append_entries(self, request: AppendRequest[R]) -> AppendReply | None:
        try:
            reply = await self._stub.AppendEntries(append_to_pb(request, self._codec), timeout=self._timeout)
        except grpc.aio.AioRpcError:
            return None
        return AppendReply(reply.term, reply.success, reply.last_log_index)

    async def install_snapshot(self, request: SnapshotRequest[S]) -> int | None:
        try:
            reply = await self._stub.InstallSnapshot(snapshot_to_pb(request, self._codec), timeout=self._timeout * 5)
        except grpc.aio.AioRpcError:
            return None
        return reply.term

    async def close(self) -> None:
        await self._channel.close()
