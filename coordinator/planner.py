"""The coordinator's next move, decided purely from state: the first rule that fires wins."""

from dataclasses import dataclass

from coordinator.placement import Placement, PlacementRefusal, place
from coordinator.state import ClusterState
from services.ids import InstanceId, ModelId


@dataclass(frozen=True)
class PlaceInstance:
    instance_id: InstanceId
    model_id: ModelId
    placement: Placement


@dataclass(frozen=True)
class RemoveInstance:
    instance_id: InstanceId


@dataclass(frozen=True)
class CannotPlace:
    model_id: ModelId
    reason: str


Action = PlaceInstance | RemoveInstance | CannotPlace


def plan(state: ClusterState, minimum_shards: int) -> Action | None:
    for instance in state.instances.values():
        if instance.status == "failed":
            return RemoveInstance(instance.instance_id)
        if instance.status == "loading" and instance.placed_term < state.term:
            # The leader that was loading it died midway; nobody will finish it: place it afresh.
            return RemoveInstance(instance.instance_id)
    if len(state.shards) < max(1, minimum_shards):
        return None
    draining_shards = {shard_id for shard_id, shard in state.shards.items() if shard.node_id in state.draining_nodes}
    staying = [
        instance
        for instance in state.instances.values()
        if all(stage.shard_id not in draining_shards for stage in instance.stages)
    ]
    ready_elsewhere = {instance.model_id for instance in staying if instance.status == "ready"}
    for instance in state.instances.values():
        if instance not in staying and instance.model_id in ready_elsewhere:
            # Drain: its replacement serves now, so this one can go without a failure.
            return RemoveInstance(instance.instance_id)
    served = {instance.model_id for instance in staying}
    shards = [state.shards[shard_id] for shard_id in sorted(state.shards) if shard_id not in draining_shards]
    refusal: CannotPlace | None = None
    for model_id, model in sorted(state.models.items()):
        if model_id in served:
            continue
        result = place(model, shards)
        if isinstance(result, PlacementRefusal):
            # One model that does not fit must not keep the others from being placed.
            refusal = refusal or CannotPlace(model_id, result.reason)
            continue
        return PlaceInstance(InstanceId(f"{model_id}@{state.last_index + 1}"), model_id, result)
    return refusal
