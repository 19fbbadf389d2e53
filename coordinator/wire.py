"""Conversions between coordinator state and protobuf (the only place that does)."""

from collections.abc import Mapping

from coordinator.raft.interface import ReplicaPosition
from coordinator.raft.node import RaftNode
from services.cluster.state import ClusterState, ShardServer, StageAssignment
from services.kernel.ids import ShardId
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
        applied_commands=state.applied_commands,
    )


def replica_positions(node: RaftNode) -> list[ReplicaPosition]:
    """This replica and, on the leader, what it knows every other voter and learner has fsynced."""
    own = ReplicaPosition(node.replica_id, node.role, node.current_term, node.storage.last_index, node.commit_index)
    if node.role != "leader":
        return [own]
    others = [
        ReplicaPosition(replica, role, node.current_term, node.match_index(replica), 0)
        for replicas, role in ((node.voters, "voter"), (node.learners, "learner"))
        for replica in replicas
        if replica != node.replica_id
    ]
    return [own, *others]


def replicas_to_pb(node: RaftNode) -> list[coordinator_pb2.ReplicaInfo]:
    return [
        coordinator_pb2.ReplicaInfo(
            replica_id=position.replica_id,
            role=position.role,
            term=position.term,
            log_index=position.log_index,
            commit_index=position.commit_index,
        )
        for position in replica_positions(node)
    ]
