"""The coordinator's next move, decided purely from state: the first rule that fires wins.

A model is kept at `instances_per_model` instances (1 by default). The first is placed over every
shard server there is, less the share the others will need; each further one over shard servers
that hold no stage yet. So with two hosts and a model that fits on each, 2 instances give two
independent copies (requests spread over both, no activation crosses the network) where 1 gives a
pipeline over both (more memory for the model and its KV cache, one copy's throughput).
"""

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.placement import Placement, PlacementRefusal, place, slowest_stage_work, work_multipliers
from services.cluster.state import ClusterState, ModelInstance, ModelSpec, RegisteredShard
from services.kernel.ids import InstanceId, ModelId


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


def plan(state: ClusterState, minimum_shards: int, instances_per_model: int = 1) -> Action | None:
    for instance in state.instances.values():
        if instance.model_id not in state.models:
            return RemoveInstance(instance.instance_id, f"model {instance.model_id} is no longer served")
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
    served = Counter(instance.model_id for instance in staying)
    shards = [state.shards[shard_id] for shard_id in sorted(state.shards) if shard_id not in draining_shards]
    holding = {stage.shard_id for instance in state.instances.values() for stage in instance.stages}
    free = [shard for shard in shards if shard.shard_id not in holding]
    # The minimum only delays a model's first placement (so a starting cluster loads it once, over
    # all its shards); re-placing a model after a loss goes ahead on whatever remains.
    enough_for_first_placement = len(state.shards) >= max(1, minimum_shards)
    refusal: CannotPlace | None = None
    for model_id, model in sorted(state.models.items()):
        have = served[model_id]
        wanted = state.served_instances.get(model_id, instances_per_model)
        if have >= wanted or (model_id not in state.placed_models and not enough_for_first_placement):
            continue
        # A shard server holds one stage at a time: a model's first copy may not take the shard
        # servers of another model's instance (only its own, which are gone by now).
        others = {stage.shard_id for other in staying if other.model_id != model_id for stage in other.stages}
        candidates = [shard for shard in shards if shard.shard_id not in others] if have == 0 else free
        result = _place_share(model, candidates, wanted - have)
        if isinstance(result, PlacementRefusal):
            if have == 0:
                # One model that does not fit must not keep the others from being placed.
                refusal = refusal or CannotPlace(model_id, result.reason)
            continue  # a further instance waits for shard servers it fits on
        return PlaceInstance(InstanceId(f"{model_id}@{state.last_index + 1}"), model_id, result)
    return refusal or (_rebalance(state, staying, shards) if instances_per_model == 1 else None)


def _place_share(model: ModelSpec, shards: Sequence[RegisteredShard], missing: int) -> Placement | PlacementRefusal:
    """One of `missing` instances over its even share of `shards` (in ring order), or over more
    of them when the model does not fit that share. With one missing: `place` over all of them."""
    share = math.ceil(len(shards) / missing)
    result = place(model, shards[:share])
    for count in range(share + 1, len(shards) + 1):
        if isinstance(result, Placement):
            break
        result = place(model, shards[:count])
    return result


def _rebalance(state: ClusterState, staying: list[ModelInstance], shards: list[RegisteredShard]) -> Action | None:
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
        if model is None or state.served_instances.get(instance.model_id, 1) > 1:
            continue
        # Only over shard servers no other model's instance holds (one stage per shard server).
        others = {stage.shard_id for other in staying if other.model_id != instance.model_id for stage in other.stages}
        candidates = [shard for shard in shards if shard.shard_id not in others]
        result = place(model, candidates)
        current = slowest_stage_work(model, instance.stages, work_multipliers(candidates[: model.num_layers]))
        if (
            isinstance(result, Placement)
            and len(result.stages) > len(instance.stages)
            and result.slowest_stage_work < current
        ):
            return RemoveInstance(
                instance.instance_id,
                f"re-placing over {len(result.stages)} shard servers instead of {len(instance.stages)}",
            )
    return None
