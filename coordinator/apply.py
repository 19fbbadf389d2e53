"""`apply(state, indexed_event) -> state`: pure, gap-free, one small function per event."""

from typing import assert_never

from coordinator.events import (
    IndexedEvent,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ShardRegistered,
    StageFailed,
    StageLoaded,
)
from coordinator.state import ClusterState, ModelInstance, StageStatus


class EventIndexError(ValueError):
    """An event arrived out of order: the log has a gap or a repeat."""


def apply(state: ClusterState, indexed: IndexedEvent) -> ClusterState:
    if indexed.index != state.last_index + 1:
        raise EventIndexError(f"event {indexed.index} cannot follow event {state.last_index}")
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
        case _:
            assert_never(event)
    return changed.model_copy(update={"last_index": indexed.index})


def apply_shard_registered(state: ClusterState, event: ShardRegistered) -> ClusterState:
    return state.model_copy(update={"shards": {**state.shards, event.shard.shard_id: event.shard}})


def apply_model_registered(state: ClusterState, event: ModelRegistered) -> ClusterState:
    return state.model_copy(update={"models": {**state.models, event.model.model_id: event.model}})


def apply_instance_placed(state: ClusterState, event: InstancePlaced) -> ClusterState:
    instance = ModelInstance(
        instance_id=event.instance_id,
        model_id=event.model_id,
        num_layers=event.num_layers,
        stages=event.stages,
    )
    return state.model_copy(update={"instances": {**state.instances, event.instance_id: instance}})


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
