"""Placement: split a model's layers into contiguous stages over shard servers. Pure.

Each stage must fit its shard's available memory, counted in bytes of that shard's compute dtype
(with "auto", float32 on a CPU shard and two bytes on a GPU's: a mixed cluster counts each its own):
its layers, the embedding on the first stage (and on the last with tied embeddings), the norm and LM head on the
last, and KV room per layer. Among the splits that fit, the one whose slowest stage does the least
work wins (work = parameters read per token, plus a layer's fixed work: see `services.models.model_spec`;
the LM head counts: on SmolLM2 it weighs ~5 layers), times the shard's slowness.
Every stage gets at least one layer. Shards keep their given order (the ring order).

Speeds are what each shard measured at start (`work_per_second`), in classes: a shard within 3x of
the fastest shard of the placement counts the same, so shards of one kind, whose measurements differ
by noise (other processes, a busy core), are placed the same from run to run; a slower one's stage
work counts 2^k times, the fastest about 2^k times faster (k rounded), so a GPU 10x faster than a CPU
host takes about 8x its work per layer. A shard that measured nothing counts as fast as the fastest.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.cluster.state import ModelSpec, RegisteredShard, StageAssignment, WeightCost
from services.kernel.devices import DeviceKind
from services.kernel.ids import ShardId

_MAX_SLOWDOWN_EXPONENT = 10
_SAME_SPEED_WITHIN = 3.0

_BestSplits = dict[int, tuple[int, tuple[int, ...]]]
"""For each end layer reached: (work of the slowest stage so far, end layer of each stage)."""


@dataclass(frozen=True)
class Placement:
    stages: tuple[StageAssignment, ...]
    slowest_stage_work: int
    explanation: str


@dataclass(frozen=True)
class PlacementRefusal:
    reason: str


def held_bytes(model: ModelSpec, cost: WeightCost, device: DeviceKind | None = None) -> int:
    """Bytes of `cost` on a shard of `device` (compute dtype "auto": in that device's dtype; None or a
    fixed dtype: `cost.bytes`)."""
    bytes_per_parameter = model.bytes_per_parameter_by_device.get(device) if device is not None else None
    if bytes_per_parameter is None or cost.parameters <= 0:
        return cost.bytes
    return cost.parameters * bytes_per_parameter


def stage_weight_bytes(model: ModelSpec, start: int, end: int, device: DeviceKind | None = None) -> int:
    """Weights a stage holds in its shard's compute dtype: its layers, the embedding and head where held."""
    total = sum(held_bytes(model, layer, device) for layer in model.layers[start:end])
    is_first, is_last = start == 0, end == model.num_layers
    if is_first or (is_last and model.tied_embeddings):
        total += held_bytes(model, model.embedding, device)
    if is_last:
        total += held_bytes(model, model.head, device)
    return total


def stage_bytes(model: ModelSpec, start: int, end: int, device: DeviceKind | None = None) -> int:
    """What a stage reserves on a shard server of `device`: its weights and KV room for its layers."""
    if model.layer_kv_bytes:
        return stage_weight_bytes(model, start, end, device) + sum(model.layer_kv_bytes[start:end])
    return stage_weight_bytes(model, start, end, device) + model.kv_bytes_per_layer * (end - start)


def stage_work(model: ModelSpec, start: int, end: int) -> int:
    work = sum(layer.work for layer in model.layers[start:end])
    if start == 0:
        work += model.embedding.work
    if end == model.num_layers:
        work += model.head.work
    return work


def work_multipliers(shards: Sequence[RegisteredShard]) -> dict[ShardId, int]:
    """How many times each shard's stage work counts: 2^k, the fastest shard about 2^k times faster."""
    fastest = max((shard.work_per_second for shard in shards), default=0.0)
    multipliers: dict[ShardId, int] = {}
    for shard in shards:
        if fastest <= 0 or shard.work_per_second <= 0 or fastest / shard.work_per_second < _SAME_SPEED_WITHIN:
            multipliers[shard.shard_id] = 1
            continue
        exponent = round(math.log2(fastest / shard.work_per_second))
        multipliers[shard.shard_id] = 2 ** min(max(exponent, 0), _MAX_SLOWDOWN_EXPONENT)
    return multipliers


def slowest_stage_work(
    model: ModelSpec, stages: Sequence[StageAssignment], multipliers: Mapping[ShardId, int] | None = None
) -> int:
    """Work per token of an existing placement's slowest stage, weighted by `multipliers` (none: 1)."""
    weights = multipliers or {}
    return max(
        (stage_work(model, stage.start_layer, stage.end_layer) * weights.get(stage.shard_id, 1) for stage in stages),
        default=0,
    )


def place(model: ModelSpec, shards: Sequence[RegisteredShard]) -> Placement | PlacementRefusal:
    """Splits `model` over `shards` (all of them, up to one per layer), or says why it cannot."""
    if not shards:
        return PlacementRefusal("no shard server is registered")
    if len(model.layers) != model.num_layers:
        return PlacementRefusal(f"model {model.model_id} describes {len(model.layers)} of {model.num_layers} layers")
    used = list(shards[: model.num_layers])
    multipliers = work_multipliers(used)
    count, layers = len(used), model.num_layers
    # best[i][end]: (slowest stage work, split) for layers [0, end) on the first i shards.
    best: list[_BestSplits] = [{} for _ in range(count + 1)]
    best[0][0] = (0, ())
    for index, shard in enumerate(used):
        for start, (slowest, splits) in best[index].items():
            remaining_shards = count - index - 1
            for end in range(start + 1, layers - remaining_shards + 1):
                if stage_bytes(model, start, end, shard.device) > shard.available_memory_bytes:
                    continue
                work = stage_work(model, start, end) * multipliers[shard.shard_id]
                candidate = (max(slowest, work), (*splits, end))
                known = best[index + 1].get(end)
                if known is None or candidate < known:
                    best[index + 1][end] = candidate
    final = best[count].get(layers)
    if final is None:
        return PlacementRefusal(_why_it_does_not_fit(model, used))
    slowest, ends = final
    stages: list[StageAssignment] = []
    start = 0
    for shard, end in zip(used, ends, strict=True):
        stages.append(StageAssignment(shard_id=shard.shard_id, start_layer=start, end_layer=end))
        start = end
    ranges = ", ".join(f"{stage.shard_id}: [{stage.start_layer}, {stage.end_layer})" for stage in stages)
    explanation = f"balanced by work per token over {count} shards: {ranges}"
    if any(multiplier > 1 for multiplier in multipliers.values()):
        slower = ", ".join(
            f"{shard_id} x{multiplier}" for shard_id, multiplier in multipliers.items() if multiplier > 1
        )
        explanation += f" (work weighted by measured speed: {slower})"
    return Placement(tuple(stages), slowest, explanation)


def _why_it_does_not_fit(model: ModelSpec, shards: Sequence[RegisteredShard]) -> str:
    needed = stage_bytes(model, 0, model.num_layers)
    offered = sum(shard.available_memory_bytes for shard in shards)
    largest_layer = max((layer.bytes for layer in model.layers), default=0)
    details = ", ".join(f"{shard.shard_id} has {shard.available_memory_bytes} bytes" for shard in shards)
    return (
        f"model {model.model_id} does not fit: it needs about {needed} bytes in its compute dtype "
        f"(largest layer {largest_layer} bytes, plus embedding, head and KV room) and the "
        f"{len(shards)} shard servers offer {offered} in all ({details})"
    )
