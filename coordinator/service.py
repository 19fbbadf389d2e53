"""The Coordinator gRPC service: decode, one call into the replica, encode.

A follower passes commands on to the leader once (marked `forwarded`, so two replicas that both
believe the other leads cannot bounce a request forever): `_on_leader` is the only place that does.
Refusals are raised as `services.kernel.status_errors` errors; the server's status interceptor answers
them with their gRPC status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeAlias, TypeVar

import grpc

from coordinator.host_memory import HostMemoryTable
from coordinator.model_pulls import ModelPulls
from coordinator.pull_wire import pull_request_from_pb, pull_to_pb
from coordinator.raft.interface import NotLeaderError
from coordinator.replica import CoordinatorReplica
from coordinator.watch import committed_after
from coordinator.wire import (
    Command,
    cluster_view_to_pb,
    drain_reply_to_pb,
    joining_replica_from_pb,
    marked_forwarded,
    membership_to_pb,
    placement_preview_to_pb,
    pulled_candidate_from_pb,
    registration_from_pb,
    registration_reply_to_pb,
    serving_preview_to_pb,
    serving_request_from_pb,
    watched_to_pb,
)
from discovery.peer import RefusedPeer
from services.kernel.ids import ModelId, NodeId
from services.kernel.status_errors import InvalidArgumentError, StatusError, UnavailableError
from services.platform.grpc_server import cluster_channel
from services.platform.status_interceptor import status_name
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

FORWARD_TIMEOUT_SECONDS = 10.0
WATCH_RECHECK_SECONDS = 1.0
Reply = TypeVar("Reply")
Context = grpc.aio.ServicerContext[object, object]
LeaderMethod: TypeAlias = (
    "Callable[[coordinator_pb2_grpc.CoordinatorAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Command, Reply]]"
)
"""Which method of the leader's Coordinator service runs a command."""


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        replica: CoordinatorReplica,
        refused_peers: Callable[[], Iterable[RefusedPeer]] = lambda: (),
        metrics_address: Callable[[], str] = lambda: "",
        pulls: ModelPulls | None = None,
    ) -> None:
        self._replica = replica
        self._pulls = pulls
        """Pulls from the Hub into this replica's store (None: this replica takes none)."""
        self._host_memory = HostMemoryTable()
        self._refused_peers = refused_peers
        """Peers discovery refused: shown by GetState so `strata status` tells why a host is missing."""
        self._metrics_address = metrics_address
        """This replica's `/metrics` host:port, reported with its own entry in GetState's replicas."""

    async def RegisterShard(
        self, request: coordinator_pb2.RegisterShardRequest, context: Context
    ) -> coordinator_pb2.RegisterShardReply:
        shard, origin = registration_from_pb(request)
        self._host_memory.record(request)

        async def register() -> coordinator_pb2.RegisterShardReply:
            state = await self._replica.register_shard(shard, origin)
            return registration_reply_to_pb(state, self._replica.node.replica_id)

        return await self._on_leader(request, register, lambda stub: stub.RegisterShard)

    async def GetState(
        self, request: coordinator_pb2.GetStateRequest, context: Context
    ) -> coordinator_pb2.ClusterState:
        reply = cluster_view_to_pb(self._replica.node, self._refused_peers(), self._metrics_address())
        if self._pulls is not None:
            reply.pulls.extend(map(pull_to_pb, self._pulls.pulls()))
        reply.host_memory.extend(self._host_memory.to_pb())
        return reply

    async def JoinCluster(
        self, request: coordinator_pb2.JoinClusterRequest, context: Context
    ) -> coordinator_pb2.MembershipReply:
        replica_id = joining_replica_from_pb(request)

        async def join() -> coordinator_pb2.MembershipReply:
            return membership_to_pb(await self._replica.add_learner(replica_id))

        return await self._on_leader(request, join, lambda stub: stub.JoinCluster)

    async def RemoveReplica(
        self, request: coordinator_pb2.RemoveReplicaRequest, context: Context
    ) -> coordinator_pb2.MembershipReply:
        async def remove() -> coordinator_pb2.MembershipReply:
            return membership_to_pb(await self._replica.remove_replica(request.replica_id))

        return await self._on_leader(request, remove, lambda stub: stub.RemoveReplica)

    async def DrainNode(
        self, request: coordinator_pb2.DrainNodeRequest, context: Context
    ) -> coordinator_pb2.DrainNodeReply:
        async def drain() -> coordinator_pb2.DrainNodeReply:
            return drain_reply_to_pb(await self._replica.drain_node(NodeId(request.node_id)))

        return await self._on_leader(request, drain, lambda stub: stub.DrainNode)

    async def ServeModel(
        self, request: coordinator_pb2.ServeModelRequest, context: Context
    ) -> coordinator_pb2.ServingPreview:
        model_id, instances = serving_request_from_pb(request)

        async def serve() -> coordinator_pb2.ServingPreview:
            return serving_preview_to_pb(await self._replica.serve_model(model_id, instances))

        return await self._on_leader(request, serve, lambda stub: stub.ServeModel)

    async def UnserveModel(
        self, request: coordinator_pb2.UnserveModelRequest, context: Context
    ) -> coordinator_pb2.UnserveModelReply:
        if not request.model_id:
            raise InvalidArgumentError("model_id is required")

        async def unserve() -> coordinator_pb2.UnserveModelReply:
            state = await self._replica.unserve_model(ModelId(request.model_id))
            return coordinator_pb2.UnserveModelReply(model_ids=sorted(state.models))

        return await self._on_leader(request, unserve, lambda stub: stub.UnserveModel)

    async def PreviewServing(
        self, request: coordinator_pb2.PreviewServingRequest, context: Context
    ) -> coordinator_pb2.ServingPreview:
        model_id, instances = serving_request_from_pb(request)
        if request.HasField("pulled_candidate"):
            manifest = pulled_candidate_from_pb(request.pulled_candidate)
            return serving_preview_to_pb(await self._replica.preview_pulled(model_id, manifest, instances))
        return serving_preview_to_pb(await self._replica.preview_serving(model_id, instances))

    async def PullModel(self, request: coordinator_pb2.PullModelRequest, context: Context) -> coordinator_pb2.ModelPull:
        repository, model_id, replace = pull_request_from_pb(request)
        pulls = self._pulls

        async def pull() -> coordinator_pb2.ModelPull:
            # The leader's store: serving reads a model's spec there (see coordinator/model_pulls.py).
            if not self._replica.node.leads_with_lease():
                raise NotLeaderError(self._replica.node.leader_id)
            if pulls is None:
                raise UnavailableError("this coordinator replica takes no pulls")
            return pull_to_pb(await pulls.start(repository, model_id, replace=replace))

        return await self._on_leader(request, pull, lambda stub: stub.PullModel)

    async def _on_leader(
        self, request: Command, run: Callable[[], Awaitable[Reply]], method: LeaderMethod[Command, Reply]
    ) -> Reply:
        """Runs a command only the leader may run; on a follower, passes it on to the leader once and
        hands back its reply, or its status (UNAVAILABLE when there is no leader to pass it to)."""
        try:
            return await run()
        except NotLeaderError as refusal:
            leader = refusal.leader
        if request.forwarded or not leader or leader == self._replica.node.replica_id:
            raise UnavailableError(f"no leader with a live lease here; leader: {leader!r}")
        async with cluster_channel(leader) as channel:
            send = method(coordinator_pb2_grpc.CoordinatorStub(channel))
            try:
                return await send(marked_forwarded(request), timeout=FORWARD_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                raise StatusError(f"leader {leader}: {error.details()}", status=status_name(error.code())) from error

    async def PreviewPlacement(
        self, request: coordinator_pb2.PreviewPlacementRequest, context: Context
    ) -> coordinator_pb2.PlacementPreview:
        result = self._replica.preview_placement(ModelId(request.model_id))
        return placement_preview_to_pb(result, self._replica.state.shards)

    async def WatchEvents(
        self, request: coordinator_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.WatchedEvent]:
        node = self._replica.node
        next_index = max(request.from_index, 1)
        while not context.done():
            for watched in map(watched_to_pb, committed_after(node, next_index)):
                next_index = watched.index + 1
                yield watched
            await node.wait_for_change(WATCH_RECHECK_SECONDS)
