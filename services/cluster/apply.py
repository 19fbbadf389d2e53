"""`apply(state, indexed_event) -> state`: pure, gap-free, one small function per event."""

from typing import assert_never

from services.cluster.events import (
    IndexedEvent,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ModelServed,
    ModelUnserved,
    NodeDrainRequested,
    ReplicasConfigured,
    ShardLeaseExpired,
    ShardRegistered,
    StageFailed,
    StageLoaded,
    TermStarted,
)
from services.cluster.state import ClusterState, ModelInstance, StageStatus
from services.kernel.ids import ShardId


class EventIndexError(ValueError):
    """An event arrived out of order: the log has a gap or a repeat."""


def apply(state: ClusterState, indexed: IndexedEvent) -> ClusterState:
    if indexed.index != state.last_index + 1:
        raise EventIndexError(f"event {indexed.index} cannot follow event {state.last_index}")
    origin = indexed.origin
    if origin is not None:
        if state.applied_commands.get(origin.client_id, 0) >= origin.sequence:
            # A retried command that already applied: it keeps its log slot and changes nothing.
            return state.model_copy(update={"last_index": indexed.index})
        state = state.model_copy(
            update={"applied_commands": {**state.applied_commands, origin.client_id: origin.sequence}}
        )
    event = indexed.event
    match event:
        case ShardRegistered():
            changed = apply_shard_registered(state, event)
        case ModelRegistered():
            changed = apply_model_registered(state, event)
        case InstancePlaced():
            changed = apply_instance_placed(state, event)
        case StageLoaded():
            changed = apply_stage_loaded(state, event)
        case StageFailed():
            changed = apply_stage_failed(state, event)
        case InstanceReady():
            changed = apply_instance_ready(state, event)
        case InstanceRemoved():
            changed = apply_instance_removed(state, event)
        case TermStarted():
            changed = apply_term_started(state, event)
        case ShardLeaseExpired():
            changed = apply_shard_lease_expired(state, event)
        case ReplicasConfigured():
            changed = apply_replicas_configured(state, event)
        case NodeDrainRequested():
            changed = apply_node_drain_requested(state, event)
        case ModelServed():
            changed = apply_model_served(state, event)
        case ModelUnserved():
            changed = apply_model_unserved(state, event)
        case _:
            assert_never(event)
    return changed.model_copy(update={"last_index": indexed.index})


def apply_shard_registered(state: ClusterState, event: ShardRegistered) -> ClusterState:
    shard = event.shard
    previous = state.shards.get(shard.shard_id)
    known = "" if previous is None else previous.incarnation
    if "" not in (known, shard.incarnation) and known != shard.incarnation:
        # Same shard id, new process: the stages it held are gone with the old one.
        state = _fail_instances_on(state, shard.shard_id, "restarted and lost its stage")
        # A drained node that comes back (maintenance done) takes work again.
        draining = tuple(node for node in state.draining_nodes if node != shard.node_id)
        state = state.model_copy(update={"draining_nodes": draining})
    return state.model_copy(update={"shards": {**state.shards, shard.shard_id: shard}})


def _fail_instances_on(state: ClusterState, shard_id: ShardId, why: str) -> ClusterState:
    instances = {
        key: instance.model_copy(update={"status": "failed", "message": f"shard {shard_id}: {why}"})
        if any(stage.shard_id == shard_id for stage in instance.stages)
        else instance
        for key, instance in state.instances.items()
    }
    return state.model_copy(update={"instances": instances})


def apply_model_registered(state: ClusterState, event: ModelRegistered) -> ClusterState:
    return state.model_copy(update={"models": {**state.models, event.model.model_id: event.model}})


def apply_instance_placed(state: ClusterState, event: InstancePlaced) -> ClusterState:
    instance = ModelInstance(
        instance_id=event.instance_id,
        model_id=event.model_id,
        num_layers=event.num_layers,
        stages=event.stages,
        placed_term=state.term,
    )
    placed = state.placed_models if event.model_id in state.placed_models else (*state.placed_models, event.model_id)
    return state.model_copy(
        update={"instances": {**state.instances, event.instance_id: instance}, "placed_models": placed}
    )


def _with_stage_status(state: ClusterState, event: StageLoaded | StageFailed, status: StageStatus) -> ClusterState:
    instance = state.instances.get(event.instance_id)
    if instance is None or all(stage.shard_id != event.shard_id for stage in instance.stages):
        return state
    stages = tuple(
        stage.model_copy(update={"status": status}) if stage.shard_id == event.shard_id else stage
        for stage in instance.stages
    )
    update: dict[str, object] = {"stages": stages}
    if isinstance(event, StageFailed):
        update |= {"status": "failed", "message": f"shard {event.shard_id}: {event.message}"}
    changed = instance.model_copy(update=update)
    return state.model_copy(update={"instances": {**state.instances, event.instance_id: changed}})


def apply_stage_loaded(state: ClusterState, event: StageLoaded) -> ClusterState:
    return _with_stage_status(state, event, "loaded")


def apply_stage_failed(state: ClusterState, event: StageFailed) -> ClusterState:
    return _with_stage_status(state, event, "failed")


def apply_instance_ready(state: ClusterState, event: InstanceReady) -> ClusterState:
    instance = state.instances.get(event.instance_id)
    if instance is None:
        return state
    ready = instance.model_copy(update={"status": "ready"})
    return state.model_copy(update={"instances": {**state.instances, event.instance_id: ready}})


def apply_instance_removed(state: ClusterState, event: InstanceRemoved) -> ClusterState:
    instances = {key: value for key, value in state.instances.items() if key != event.instance_id}
    return state.model_copy(update={"instances": instances})


def apply_term_started(state: ClusterState, event: TermStarted) -> ClusterState:
    return state.model_copy(update={"term": event.term, "leader": event.leader})


def apply_shard_lease_expired(state: ClusterState, event: ShardLeaseExpired) -> ClusterState:
    shards = {key: value for key, value in state.shards.items() if key != event.shard_id}
    failed = _fail_instances_on(state, event.shard_id, "lease expired, the shard server is gone")
    return failed.model_copy(update={"shards": shards})


def apply_replicas_configured(state: ClusterState, event: ReplicasConfigured) -> ClusterState:
    return state.model_copy(update={"voters": event.voters, "learners": event.learners})


def apply_node_drain_requested(state: ClusterState, event: NodeDrainRequested) -> ClusterState:
    if event.node_id in state.draining_nodes:
        return state
    return state.model_copy(update={"draining_nodes": (*state.draining_nodes, event.node_id)})


def apply_model_served(state: ClusterState, event: ModelServed) -> ClusterState:
    model_id = event.model.model_id
    return state.model_copy(
        update={
            "models": {**state.models, model_id: event.model},
            "served_instances": {**state.served_instances, model_id: event.instances},
            "unserved_models": tuple(other for other in state.unserved_models if other != model_id),
        }
    )


def apply_model_unserved(state: ClusterState, event: ModelUnserved) -> ClusterState:
    """Drops the model; its instances stay until the planner removes them (so shards are told in order)."""
    model_id = event.model_id
    unserved = state.unserved_models if model_id in state.unserved_models else (*state.unserved_models, model_id)
    return state.model_copy(
        update={
            "models": {key: value for key, value in state.models.items() if key != model_id},
            "served_instances": {key: value for key, value in state.served_instances.items() if key != model_id},
            "unserved_models": unserved,
            "placed_models": tuple(other for other in state.placed_models if other != model_id),
        }
    )
