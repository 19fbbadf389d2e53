"""Conversions between coordinator state and protobuf (the only place that does).

A malformed command is refused here with `InvalidArgumentError` (INVALID_ARGUMENT), before it reaches
the replica.
"""

import json
import math
from collections.abc import Iterable, Mapping
from copy import deepcopy
from pathlib import Path
from typing import Protocol, TypeVar

from coordinator.cluster_log import ClusterLogEntry, ClusterNode, ClusterSnapshot
from coordinator.placement import Placement, PlacementRefusal
from coordinator.raft.interface import ReplicaPosition
from coordinator.raft.storage import Snapshot
from coordinator.serving_preview import ServingPreview
from discovery.peer import RefusedPeer
from services.cluster.events import CommandOrigin
from services.cluster.state import ClusterState, ModelInstance, RegisteredShard, StageAssignment
from services.kernel.devices import DEVICE_KINDS, parse_device_kind
from services.kernel.ids import ModelId, NodeId, ShardId
from services.kernel.status_errors import InvalidArgumentError
from services.models.model_config import parse_model_config
from services.models.model_files import ModelManifest, TensorHeader, manifest_from_headers
from strata_wire import coordinator_pb2, model_transfer_pb2, shard_pb2


class Forwardable(Protocol):
    """A command a follower may pass on to the leader, once."""

    forwarded: bool


Command = TypeVar("Command", bound=Forwardable)


def marked_forwarded(command: Command) -> Command:
    """A copy of `command` marked as passed on, so the replica it reaches does not pass it on again."""
    copy = deepcopy(command)
    copy.forwarded = True
    return copy


def registration_from_pb(message: coordinator_pb2.RegisterShardRequest) -> tuple[RegisteredShard, CommandOrigin | None]:
    """The shard server a registration describes, and its command origin (None: not deduplicated)."""
    if not message.shard_id or not message.node_id or not message.address:
        raise InvalidArgumentError("shard_id, node_id and address are required")
    if message.available_memory_bytes <= 0:
        raise InvalidArgumentError("available_memory_bytes must be positive")
    device = parse_device_kind(message.device)
    if device is None:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICE_KINDS)}")
    if not math.isfinite(message.work_per_second) or message.work_per_second < 0:
        raise InvalidArgumentError("work_per_second must be a non-negative number")
    origin = CommandOrigin(client_id=message.client_id, sequence=message.sequence) if message.client_id else None
    shard = RegisteredShard(
        shard_id=ShardId(message.shard_id),
        node_id=NodeId(message.node_id),
        address=message.address,
        available_memory_bytes=message.available_memory_bytes,
        device=device,
        incarnation=message.incarnation,
        metrics_address=message.metrics_address,
        work_per_second=message.work_per_second,
        fetched_bytes_from_peers=message.fetched_bytes_from_peers,
        fetched_bytes_from_hub=message.fetched_bytes_from_hub,
    )
    return shard, origin


def registration_reply_to_pb(state: ClusterState, leader: str) -> coordinator_pb2.RegisterShardReply:
    return coordinator_pb2.RegisterShardReply(term=state.term, leader=leader, applied_index=state.last_index)


def joining_replica_from_pb(message: coordinator_pb2.JoinClusterRequest) -> str:
    if not message.replica_id:
        raise InvalidArgumentError("replica_id is required")
    return message.replica_id


def membership_to_pb(state: ClusterState) -> coordinator_pb2.MembershipReply:
    return coordinator_pb2.MembershipReply(voters=state.voters, learners=state.learners)


def drain_reply_to_pb(state: ClusterState) -> coordinator_pb2.DrainNodeReply:
    return coordinator_pb2.DrainNodeReply(draining_nodes=state.draining_nodes)


def stage_to_pb(stage: StageAssignment, shards: Mapping[ShardId, RegisteredShard]) -> coordinator_pb2.Stage:
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
                metrics_address=shard.metrics_address,
                work_per_second=shard.work_per_second,
                fetched_bytes_from_peers=shard.fetched_bytes_from_peers,
                fetched_bytes_from_hub=shard.fetched_bytes_from_hub,
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


def replica_positions(node: ClusterNode) -> list[ReplicaPosition]:
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


def replicas_to_pb(node: ClusterNode, metrics_address: str = "") -> list[coordinator_pb2.ReplicaInfo]:
    """`metrics_address`: this replica's `/metrics` (the others' are not known here)."""
    return [
        coordinator_pb2.ReplicaInfo(
            replica_id=position.replica_id,
            role=position.role,
            term=position.term,
            log_index=position.log_index,
            commit_index=position.commit_index,
            metrics_address=metrics_address if position.replica_id == node.replica_id else "",
        )
        for position in replica_positions(node)
    ]


def cluster_view_to_pb(
    node: ClusterNode, refused_peers: Iterable[RefusedPeer], metrics_address: str = ""
) -> coordinator_pb2.ClusterState:
    """What GetState answers: the state, and this replica's view of the leader, the replicas (with its own
    `/metrics` address) and the peers discovery refused (so `strata status` tells why a host is missing)."""
    reply = state_to_pb(node.state)
    reply.leader = node.leader_id
    reply.replicas.extend(replicas_to_pb(node, metrics_address))
    reply.voters.extend(node.voters)
    reply.learners.extend(node.learners)
    reply.refused_peers.extend(
        coordinator_pb2.RefusedPeer(address=peer.address, node_id=peer.node_id, reason=peer.reason)
        for peer in refused_peers
    )
    return reply


def placement_preview_to_pb(
    result: Placement | PlacementRefusal, shards: Mapping[ShardId, RegisteredShard]
) -> coordinator_pb2.PlacementPreview:
    if isinstance(result, PlacementRefusal):
        return coordinator_pb2.PlacementPreview(fits=False, explanation=result.reason)
    return coordinator_pb2.PlacementPreview(
        fits=True,
        stages=[stage_to_pb(stage, shards) for stage in result.stages],
        explanation=result.explanation,
    )


MAX_INSTANCES = 64


def serving_request_from_pb(
    message: coordinator_pb2.ServeModelRequest | coordinator_pb2.PreviewServingRequest,
) -> tuple[ModelId, int]:
    """The model id and copies a serve or preview asks for (0 copies: 1)."""
    if not message.model_id:
        raise InvalidArgumentError("model_id is required")
    instances = message.instances or 1
    if not 1 <= instances <= MAX_INSTANCES:
        raise InvalidArgumentError(f"instances must be between 1 and {MAX_INSTANCES}")
    return ModelId(message.model_id), instances


def serving_preview_to_pb(preview: ServingPreview) -> coordinator_pb2.ServingPreview:
    return coordinator_pb2.ServingPreview(
        model_id=preview.model_id,
        fits=preview.fits,
        stages=[
            coordinator_pb2.ServingStage(
                node_id=stage.node_id,
                shard_id=stage.shard_id,
                start_layer=stage.start_layer,
                end_layer=stage.end_layer,
                memory_bytes=stage.memory_bytes,
            )
            for stage in preview.stages
        ],
        missing_bytes=preview.missing_bytes,
        reason=preview.reason or "",
    )


def watched_to_pb(item: ClusterLogEntry | ClusterSnapshot) -> coordinator_pb2.WatchedEvent:
    """A committed event, or the snapshot a subscriber behind it gets first."""
    if isinstance(item, Snapshot):
        return coordinator_pb2.WatchedEvent(index=item.last_index, state_json=item.state.model_dump_json().encode())
    return coordinator_pb2.WatchedEvent(index=item.index, record_json=item.record.model_dump_json().encode())


def assign_request_to_pb(
    *,
    term: int,
    instance: ModelInstance,
    stage: StageAssignment,
    next_address: str,
    prefill_step_size: int,
    compute_dtype: str,
    kv_budget_bytes_per_layer: int,
    kv_max_sequences: int = 0,
) -> shard_pb2.AssignRequest:
    """The instruction to the shard of `stage` to load it, in a ring of all the instance's stages."""
    return shard_pb2.AssignRequest(
        term=term,
        instance_id=instance.instance_id,
        model_id=instance.model_id,
        start_layer=stage.start_layer,
        end_layer=stage.end_layer,
        num_layers=instance.num_layers,
        next_address=next_address,
        prefill_step_size=prefill_step_size,
        compute_dtype=compute_dtype,
        ring_size=len(instance.stages),
        kv_budget_bytes_per_layer=kv_budget_bytes_per_layer,
        kv_max_sequences=kv_max_sequences,
    )


def pulled_candidate_from_pb(message: model_transfer_pb2.PulledModelCandidate) -> ModelManifest:
    """The sizes of a model about to be pulled, from its config text and tensor headers."""
    try:
        config = parse_model_config(json.loads(message.config_json), Path("config.json"))
    except ValueError as error:  # not JSON, or ModelConfigError
        raise InvalidArgumentError(f"pulled_candidate.config_json: {error}") from error
    headers: dict[str, TensorHeader] = {}
    for tensor in message.tensors:
        if not tensor.name or tensor.stored_bytes < 0 or any(dimension < 0 for dimension in tensor.shape):
            raise InvalidArgumentError(f"pulled_candidate: tensor {tensor.name!r} has no name or a negative size")
        headers[tensor.name] = TensorHeader(
            dtype=tensor.dtype, shape=tuple(tensor.shape), stored_bytes=tensor.stored_bytes
        )
    try:
        return manifest_from_headers(config, dict.fromkeys(headers, ""), headers)
    except ValueError as error:
        raise InvalidArgumentError(f"pulled_candidate: {error}") from error
