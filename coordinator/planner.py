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
    if len(state.shards) < max(1, minimum_shards):
        return None
    served = {instance.model_id for instance in state.instances.values()}
    shards = [state.shards[shard_id] for shard_id in sorted(state.shards)]
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
