"""Events: the only way cluster state changes. Commands come in, events are logged and applied.

No per-token or per-request traffic ever becomes an event.
"""

from typing import Literal

from coordinator.state import Frozen, ModelSpec, ShardServer, StageAssignment
from services.ids import InstanceId, ModelId, ShardId


class ShardRegistered(Frozen):
    kind: Literal["shard_registered"] = "shard_registered"
    shard: ShardServer


class ModelRegistered(Frozen):
    kind: Literal["model_registered"] = "model_registered"
    model: ModelSpec


class InstancePlaced(Frozen):
    kind: Literal["instance_placed"] = "instance_placed"
    instance_id: InstanceId
    model_id: ModelId
    num_layers: int
    stages: tuple[StageAssignment, ...]


class StageLoaded(Frozen):
    kind: Literal["stage_loaded"] = "stage_loaded"
    instance_id: InstanceId
    shard_id: ShardId


class StageFailed(Frozen):
    kind: Literal["stage_failed"] = "stage_failed"
    instance_id: InstanceId
    shard_id: ShardId
    message: str


class InstanceReady(Frozen):
    kind: Literal["instance_ready"] = "instance_ready"
    instance_id: InstanceId


class InstanceRemoved(Frozen):
    kind: Literal["instance_removed"] = "instance_removed"
    instance_id: InstanceId


Event = ShardRegistered | ModelRegistered | InstancePlaced | StageLoaded | StageFailed | InstanceReady | InstanceRemoved


class IndexedEvent(Frozen):
    index: int
    event: Event
