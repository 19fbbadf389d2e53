"""The Coordinator gRPC service: decode, one call into the replica, encode."""

import grpc

from coordinator.placement import PlacementRefusal, place
from coordinator.replica import CoordinatorReplica
from coordinator.state import ShardServer
from coordinator.wire import stage_to_pb, state_to_pb
from services.ids import ModelId, NodeId, ShardId
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

DEVICES = ("cpu", "gpu", "metal")


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, replica: CoordinatorReplica) -> None:
        self._replica = replica

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
        self._replica.register_shard(
            ShardServer(
                shard_id=ShardId(request.shard_id),
                node_id=NodeId(request.node_id),
                address=request.address,
                available_memory_bytes=request.available_memory_bytes,
                device=device,
            )
        )
        return coordinator_pb2.RegisterShardReply(term=self._replica.state.term)

    async def GetState(
        self, request: coordinator_pb2.GetStateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.ClusterState:
        return state_to_pb(self._replica.state)

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
