"""The Coordinator gRPC service: decode, one call into the replica, encode.

A follower passes commands on to the leader once (marked `forwarded`, so two replicas that both
believe the other leads cannot bounce a request forever).
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from coordinator.placement import PlacementRefusal, place
from coordinator.raft.interface import NotLeaderError
from coordinator.replica import CoordinatorReplica
from coordinator.watch import committed_after
from coordinator.wire import replicas_to_pb, stage_to_pb, state_to_pb
from discovery.peer import RefusedPeer
from services.cluster.events import CommandOrigin
from services.cluster.state import ShardServer
from services.kernel.ids import ModelId, NodeId, ShardId
from services.platform.grpc_server import cluster_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

DEVICES = ("cpu", "gpu", "metal")
FORWARD_TIMEOUT_SECONDS = 10.0
WATCH_RECHECK_SECONDS = 1.0
Reply = TypeVar("Reply")


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self, replica: CoordinatorReplica, refused_peers: Callable[[], Iterable[RefusedPeer]] = lambda: ()
    ) -> None:
        self._replica = replica
        self._refused_peers = refused_peers
        """Peers discovery refused: shown by GetState so `strata status` tells why a host is missing."""

    async def RegisterShard(
        self, request: coordinator_pb2.RegisterShardRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.RegisterShardReply:
        if not request.shard_id or not request.node_id or not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "shard_id, node_id and address are required")
        if request.available_memory_bytes <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "available_memory_bytes must be positive")
        device = request.device
        if device not in ("cpu", "gpu", "metal"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"device must be one of {', '.join(DEVICES)}")
            raise AssertionError("unreachable")
        origin = CommandOrigin(client_id=request.client_id, sequence=request.sequence) if request.client_id else None
        shard = ShardServer(
            shard_id=ShardId(request.shard_id),
            node_id=NodeId(request.node_id),
            address=request.address,
            available_memory_bytes=request.available_memory_bytes,
            device=device,
            incarnation=request.incarnation,
        )
        try:
            state = await self._replica.register_shard(shard, origin)
        except NotLeaderError as refusal:
            forwarded = coordinator_pb2.RegisterShardRequest()
            forwarded.CopyFrom(request)
            forwarded.forwarded = True
            return await self._on_leader(
                refusal,
                request.forwarded,
                context,
                lambda stub: stub.RegisterShard(forwarded, timeout=FORWARD_TIMEOUT_SECONDS),
            )
        return coordinator_pb2.RegisterShardReply(
            term=state.term, leader=self._replica.node.replica_id, applied_index=state.last_index
        )

    async def GetState(
        self, request: coordinator_pb2.GetStateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.ClusterState:
        node = self._replica.node
        reply = state_to_pb(node.state)
        reply.leader = node.leader_id
        reply.replicas.extend(replicas_to_pb(node))
        reply.voters.extend(node.voters)
        reply.learners.extend(node.learners)
        reply.refused_peers.extend(
            coordinator_pb2.RefusedPeer(address=peer.address, node_id=peer.node_id, reason=peer.reason)
            for peer in self._refused_peers()
        )
        return reply

    async def JoinCluster(
        self, request: coordinator_pb2.JoinClusterRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.MembershipReply:
        if not request.replica_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "replica_id is required")
        try:
            state = await self._replica.add_learner(request.replica_id)
        except NotLeaderError as refusal:
            forwarded = coordinator_pb2.JoinClusterRequest(replica_id=request.replica_id, forwarded=True)
            return await self._on_leader(
                refusal,
                request.forwarded,
                context,
                lambda stub: stub.JoinCluster(forwarded, timeout=FORWARD_TIMEOUT_SECONDS),
            )
        return coordinator_pb2.MembershipReply(voters=state.voters, learners=state.learners)

    async def RemoveReplica(
        self, request: coordinator_pb2.RemoveReplicaRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.MembershipReply:
        try:
            outcome = await self._replica.remove_replica(request.replica_id)
        except NotLeaderError as refusal:
            forwarded = coordinator_pb2.RemoveReplicaRequest(replica_id=request.replica_id, forwarded=True)
            return await self._on_leader(
                refusal,
                request.forwarded,
                context,
                lambda stub: stub.RemoveReplica(forwarded, timeout=FORWARD_TIMEOUT_SECONDS),
            )
        if isinstance(outcome, str):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, outcome)
            raise AssertionError("unreachable")
        return coordinator_pb2.MembershipReply(voters=outcome.voters, learners=outcome.learners)

    async def DrainNode(
        self, request: coordinator_pb2.DrainNodeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.DrainNodeReply:
        try:
            outcome = await self._replica.drain_node(NodeId(request.node_id))
        except NotLeaderError as refusal:
            forwarded = coordinator_pb2.DrainNodeRequest(node_id=request.node_id, forwarded=True)
            return await self._on_leader(
                refusal,
                request.forwarded,
                context,
                lambda stub: stub.DrainNode(forwarded, timeout=FORWARD_TIMEOUT_SECONDS),
            )
        if isinstance(outcome, str):
            await context.abort(grpc.StatusCode.NOT_FOUND, outcome)
            raise AssertionError("unreachable")
        return coordinator_pb2.DrainNodeReply(draining_nodes=outcome.draining_nodes)

    async def _leader_for(
        self, refusal: NotLeaderError, forwarded: bool, context: grpc.aio.ServicerContext[object, object]
    ) -> str:
        """Where to pass a command on to, or aborts when it may not be passed on."""
        if forwarded or not refusal.leader or refusal.leader == self._replica.node.replica_id:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"no leader with a live lease here; leader: {refusal.leader!r}"
            )
        return refusal.leader

    async def _on_leader(
        self,
        refusal: NotLeaderError,
        forwarded: bool,
        context: grpc.aio.ServicerContext[object, object],
        send: Callable[["coordinator_pb2_grpc.CoordinatorAsyncStub"], Awaitable[Reply]],
    ) -> Reply:
        """Passes a command only the leader may run on to it, once; hands back its reply or its status."""
        leader = await self._leader_for(refusal, forwarded, context)
        async with cluster_channel(leader) as channel:
            try:
                return await send(coordinator_pb2_grpc.CoordinatorStub(channel))
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), f"leader {leader}: {error.details()}")
                raise AssertionError("unreachable") from error

    async def PreviewPlacement(
        self, request: coordinator_pb2.PreviewPlacementRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.PlacementPreview:
        state = self._replica.state
        model = state.models.get(ModelId(request.model_id))
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} is not registered")
            raise AssertionError("unreachable")
        result = place(model, [state.shards[shard_id] for shard_id in sorted(state.shards)])
        if isinstance(result, PlacementRefusal):
            return coordinator_pb2.PlacementPreview(fits=False, explanation=result.reason)
        shards = dict(state.shards)
        return coordinator_pb2.PlacementPreview(
            fits=True,
            stages=[stage_to_pb(stage, shards) for stage in result.stages],
            explanation=result.explanation,
        )

    async def WatchEvents(
        self, request: coordinator_pb2.WatchEventsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[coordinator_pb2.WatchedEvent]:
        node = self._replica.node
        next_index = max(request.from_index, 1)
        while not context.done():
            for watched in committed_after(node, next_index):
                next_index = watched.index + 1
                yield watched
            await node.wait_for_change(WATCH_RECHECK_SECONDS)
