"""Where a model would go if it were served now, with `instances` copies, or why it would not fit. Pure.

Each copy is placed as the planner places it (coordinator.planner): over its share of the shard servers
that hold no stage yet (a shard server holds one stage at a time) and are not draining. When a copy does
not fit, `missing_bytes` is the least extra memory, the same on each shard server left for it, that
would make it fit, summed over them, plus the whole of every later copy (no shard server is left for it).
"""

import math
from dataclasses import dataclass

from coordinator.placement import Placement, PlacementRefusal, place, stage_bytes
from services.cluster.state import ClusterState, ModelSpec, RegisteredShard, StageAssignment


@dataclass(frozen=True)
class PreviewStage:
    node_id: str
    shard_id: str
    start_layer: int
    end_layer: int
    memory_bytes: int
    """Weights and KV room the stage reserves on its shard server."""


@dataclass(frozen=True)
class ServingPreview:
    model_id: str
    fits: bool
    stages: tuple[PreviewStage, ...]
    """Every copy's stages, copy after copy (each copy's first stage holds layer 0)."""
    missing_bytes: int
    reason: str | None


def free_shards(state: ClusterState) -> list[RegisteredShard]:
    """Shard servers (in ring order) that hold no stage and are not draining."""
    holding = {stage.shard_id for instance in state.instances.values() for stage in instance.stages}
    return [
        state.shards[shard_id]
        for shard_id in sorted(state.shards)
        if shard_id not in holding and state.shards[shard_id].node_id not in state.draining_nodes
    ]


def whole_model_bytes(model: ModelSpec) -> int:
    return stage_bytes(model, 0, model.num_layers)


def missing_memory_bytes(model: ModelSpec, shards: list[RegisteredShard]) -> int:
    """The least extra memory per shard server (the same on each) that makes `model` fit on
    `shards`, times their number; all of the model's bytes when there is none."""
    if not shards:
        return whole_model_bytes(model)
    low, high = 0, whole_model_bytes(model)  # with this much more each, one shard alone holds it all

    def fits_with(extra: int) -> bool:
        grown = [
            shard.model_copy(update={"available_memory_bytes": shard.available_memory_bytes + extra})
            for shard in shards
        ]
        return isinstance(place(model, grown), Placement)

    while low < high:
        middle = (low + high) // 2
        if fits_with(middle):
            high = middle
        else:
            low = middle + 1
    return low * len(shards)


def _share(model: ModelSpec, shards: list[RegisteredShard], copies: int) -> Placement | PlacementRefusal:
    """One of `copies` over its even share of `shards`, or over more of them when that share is too small."""
    share = math.ceil(len(shards) / copies)
    result = place(model, shards[:share])
    for count in range(share + 1, len(shards) + 1):
        if isinstance(result, Placement):
            break
        result = place(model, shards[:count])
    return result


def preview_serving(state: ClusterState, model: ModelSpec, instances: int) -> ServingPreview:
    shards = free_shards(state)
    stages: list[StageAssignment] = []
    for copy in range(instances):
        left = instances - copy
        result = _share(model, shards, left) if shards else PlacementRefusal("no shard server is free")
        if isinstance(result, PlacementRefusal):
            missing = missing_memory_bytes(model, shards) + (left - 1) * whole_model_bytes(model)
            free_memory = sum(shard.available_memory_bytes for shard in shards)
            reason = (
                f"model {model.model_id} does not fit: copy {copy + 1} of {instances} needs about "
                f"{whole_model_bytes(model)} bytes and the {len(shards)} free shard servers offer {free_memory}; "
                f"{missing} bytes are missing"
            )
            return ServingPreview(str(model.model_id), False, _described(state, model, stages), missing, reason)
        stages.extend(result.stages)
        used = {stage.shard_id for stage in result.stages}
        shards = [shard for shard in shards if shard.shard_id not in used]
    return ServingPreview(str(model.model_id), True, _described(state, model, stages), 0, None)


def _described(state: ClusterState, model: ModelSpec, stages: list[StageAssignment]) -> tuple[PreviewStage, ...]:
    return tuple(
        PreviewStage(
            node_id=str(state.shards[stage.shard_id].node_id),
            shard_id=str(stage.shard_id),
            start_layer=stage.start_layer,
            end_layer=stage.end_layer,
            memory_bytes=stage_bytes(model, stage.start_layer, stage.end_layer, state.shards[stage.shard_id].device),
        )
        for stage in stages
    )
