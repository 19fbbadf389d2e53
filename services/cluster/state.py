"""Cluster state: frozen, strict pydantic models, changed only by `apply` (see apply.py)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.devices import DeviceKind
from services.kernel.ids import InstanceId, ModelId, NodeId, ShardId


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class RegisteredShard(Frozen):
    shard_id: ShardId
    node_id: NodeId
    address: str
    available_memory_bytes: int
    device: DeviceKind
    incarnation: str = ""
    """Random per shard process; "" when unknown (found by discovery rather than registered)."""
    metrics_address: str = ""
    """host:port of its Prometheus `/metrics` endpoint; "" when unknown (found by discovery)."""
    work_per_second: float = 0.0
    """Parameters per second its device read in a decode-like product at start; 0: not measured."""
    fetched_bytes_from_peers: int = 0
    """Model file bytes it received from peers' stores since it started, as it last registered."""
    fetched_bytes_from_hub: int = 0
    """Tensor bytes it read from the Hub by range requests (lazily pulled models), likewise."""


class WeightCost(Frozen):
    """Bytes held in the compute dtype, and work per token (parameters read)."""

    bytes: int
    work: int
    parameters: int = 0
    """Parameters held, to count bytes in a shard's own dtype ("auto"); 0: unknown (an older log)."""


class ModelSpec(Frozen):
    model_id: ModelId
    num_layers: int
    layers: tuple[WeightCost, ...]
    embedding: WeightCost
    head: WeightCost
    """Final norm and LM head; with tied embeddings the head's work is the embedding matrix."""
    tied_embeddings: bool
    kv_bytes_per_layer: int
    """The KV budget per layer (context length x concurrent rows of the most demanding layer)."""
    layer_kv_bytes: tuple[int, ...] = ()
    """KV room placement reserves per global layer (a sliding layer less); empty: `kv_bytes_per_layer` each."""
    kv_max_sequences: int = 0
    """Requests the first shard may run at once, which the sliding layers' room assumes; 0: no cap."""
    bytes_per_parameter_by_device: dict[DeviceKind, int] = {}
    """With compute dtype "auto": what a shard on each device holds per parameter (float32 on the CPU,
    two bytes on GPUs); `bytes` count the CPU's. Empty: every shard holds `bytes`."""


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
    placed_term: int = 0
    """Leader term that placed it: a loading instance of an older term was abandoned by a dead leader."""


class ClusterState(Frozen):
    term: int = 1
    """Term of the leader whose first entry was applied last: what shards are fenced with."""
    leader: str = ""
    """Replica id (host:port) of that leader."""
    last_index: int = 0
    applied_commands: dict[str, int] = {}
    """Highest command sequence applied per client id, so a retried command applies once."""
    voters: tuple[str, ...] = ()
    """Coordinator replicas (host:port) that vote and count towards commits."""
    learners: tuple[str, ...] = ()
    """Replicas that receive the log but do not vote yet; promoted one at a time."""
    draining_nodes: tuple[NodeId, ...] = ()
    """Nodes whose instances move elsewhere before they stop; a node's restart ends its drain."""
    shards: dict[ShardId, RegisteredShard] = {}
    models: dict[ModelId, ModelSpec] = {}
    instances: dict[InstanceId, ModelInstance] = {}
    served_instances: dict[ModelId, int] = {}
    """Instances wanted per model served at run time (`ModelServed`); others get the planner's default."""
    unserved_models: tuple[ModelId, ...] = ()
    """Models unserved at run time: a coordinator's start-up `--model` list does not register them again."""
    placed_models: tuple[ModelId, ...] = ()
    """Models placed at least once: the planner's wait for a minimum of shards holds only before that."""
