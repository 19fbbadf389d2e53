"""Cluster state: frozen, strict pydantic models, changed only by `apply` (see apply.py)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.ids import InstanceId, ModelId, NodeId, ShardId


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class ShardServer(Frozen):
    shard_id: ShardId
    node_id: NodeId
    address: str
    available_memory_bytes: int
    device: Literal["cpu", "gpu", "metal"]


class WeightCost(Frozen):
    """Bytes held in the compute dtype, and work per token (parameters read)."""

    bytes: int
    work: int


class ModelSpec(Frozen):
    model_id: ModelId
    num_layers: int
    layers: tuple[WeightCost, ...]
    embedding: WeightCost
    head: WeightCost
    """Final norm and LM head; with tied embeddings the head's work is the embedding matrix."""
    tied_embeddings: bool
    kv_bytes_per_layer: int
    """KV room reserved per layer held (context length x concurrent rows budget)."""


StageStatus = Literal["assigned", "loaded", "failed"]
InstanceStatus = Literal["loading", "ready", "failed"]


class StageAssignment(Frozen):
    shard_id: ShardId
    start_layer: int
    end_layer: int
    status: StageStatus = "assigned"


class ModelInstance(Frozen):
    instance_id: InstanceId
    model_id: ModelId
    num_layers: int
    stages: tuple[StageAssignment, ...]
    status: InstanceStatus = "loading"
    message: str = ""


class ClusterState(Frozen):
    term: int = 1
    last_index: int = 0
    shards: dict[ShardId, ShardServer] = {}
    models: dict[ModelId, ModelSpec] = {}
    instances: dict[InstanceId, ModelInstance] = {}
