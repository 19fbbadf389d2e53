"""The coordinator's next move, decided purely from state: the first rule that fires wins."""

from dataclasses import dataclass

from coordinator.placement import Placement, PlacementRefusal, place, slowest_stage_work
from coordinator.state import ClusterState, ModelInstance, ShardServer
from services.ids import InstanceId, ModelId


@dataclass(frozen=True)
class PlaceInstance:
    instance_id: InstanceId
    model_id: ModelId
    placement: Placement


@dataclass(frozen=True)
class RemoveInstance:
    instance_id: InstanceId
    reason: str = ""


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
    # The minimum only delays a model's first placement (so a starting cluster loads it once, over
    # all its shards); re-placing a model after a loss goes ahead on whatever remains.
    enough_for_first_placement = len(state.shards) >= max(1, minimum_shards)
    refusal: CannotPlace | None = None
    for model_id, model in sorted(state.models.items()):
        if model_id in served or (model_id not in state.placed_models and not enough_for_first_placement):
            continue
        result = place(model, shards)
        if isinstance(result, PlacementRefusal):
            # One model that does not fit must not keep the others from being placed.
            refusal = refusal or CannotPlace(model_id, result.reason)
            continue
        return PlaceInstance(InstanceId(f"{model_id}@{state.last_index + 1}"), model_id, result)
    return refusal or _rebalance(state, staying, shards)


def _rebalance(state: ClusterState, staying: list[ModelInstance], shards: list[ShardServer]) -> Action | None:
    """Spreads a ready instance over shard servers that joined after it was placed.

    A shard server holds one stage at a time, so the instance cannot stay up while its successor
    loads on the same servers: it is removed, re-placed over every server on the next step, and the
    gateway replays the requests that were running (a pause, not an error). Only a strictly faster
    slowest stage justifies that, so a placement that cannot improve is left alone.
    """
    used = {stage.shard_id for instance in state.instances.values() for stage in instance.stages}
    if not any(shard.shard_id not in used for shard in shards):
        return None
    for instance in sorted(staying, key=lambda instance: instance.instance_id):
        if instance.status != "ready" or sum(1 for other in staying if other.model_id == instance.model_id) > 1:
            continue
        model = state.models.get(instance.model_id)
        if model is None:
            continue
        result = place(model, shards)
        if (
            isinstance(result, Placement)
            and len(result.stages) > len(instance.stages)
            and result.slowest_stage_work < slowest_stage_work(model, instance.stages)
        ):
            return RemoveInstance(
                instance.instance_id,
                f"re-placing over {len(result.stages)} shard servers instead of {len(instance.stages)}",
            )
    return None
