"""Conversions between coordinator state and protobuf (the only place that does)."""

from collections.abc import Mapping

from coordinator.state import ClusterState, ShardServer, StageAssignment
from services.ids import ShardId
from strata_wire import coordinator_pb2


def stage_to_pb(stage: StageAssignment, shards: Mapping[ShardId, ShardServer]) -> coordinator_pb2.Stage:
    shard = shards.get(stage.shard_id)
    return coordinator_pb2.Stage(
        shard_id=stage.shard_id,
        address=shard.address if shard is not None else "",
        start_layer=stage.start_layer,
        end_layer=stage.end_layer,
        status=stage.status,
    )


def state_to_pb(state: ClusterState) -> coordinator_pb2.ClusterState:
    shards = state.shards
    return coordinator_pb2.ClusterState(
        term=state.term,
        last_index=state.last_index,
        shards=[
            coordinator_pb2.ShardServerInfo(
                shard_id=shard.shard_id,
                node_id=shard.node_id,
                address=shard.address,
                available_memory_bytes=shard.available_memory_bytes,
                device=shard.device,
            )
            for shard in state.shards.values()
        ],
        instances=[
            coordinator_pb2.ModelInstance(
                instance_id=instance.instance_id,
                model_id=instance.model_id,
                num_layers=instance.num_layers,
                stages=[stage_to_pb(stage, shards) for stage in instance.stages],
                status=instance.status,
                message=instance.message,
            )
            for instance in state.instances.values()
        ],
        model_ids=sorted(state.models),
    )
