"""Events: the only way cluster state changes. Commands come in, events are logged and applied.

No per-token or per-request traffic ever becomes an event.
"""

from typing import Annotated, Literal

from pydantic import Field

from services.cluster.state import Frozen, ModelSpec, RegisteredShard, StageAssignment
from services.kernel.ids import InstanceId, ModelId, NodeId, ShardId


class ShardRegistered(Frozen):
    kind: Literal["shard_registered"] = "shard_registered"
    shard: RegisteredShard


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


class ShardLeaseExpired(Frozen):
    """The leader stopped hearing from a shard server: it leaves the cluster, its instances fail."""

    kind: Literal["shard_lease_expired"] = "shard_lease_expired"
    shard_id: ShardId


class ReplicasConfigured(Frozen):
    """The coordinator replicas' membership from now on (one replica added, promoted or removed at a time)."""

    kind: Literal["replicas_configured"] = "replicas_configured"
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()


class NodeDrainRequested(Frozen):
    """Move every instance off this node (new placement first, then removal) before it stops."""

    kind: Literal["node_drain_requested"] = "node_drain_requested"
    node_id: NodeId


class ModelServed(Frozen):
    """Serve a model from now on (a run-time command): `instances` copies, each on shard servers of its own."""

    kind: Literal["model_served"] = "model_served"
    model: ModelSpec
    instances: int = Field(ge=1)


class ModelUnserved(Frozen):
    """Stop serving a model: the planner removes its instances; a coordinator's `--model` no longer
    brings it back (until it is served again)."""

    kind: Literal["model_unserved"] = "model_unserved"
    model_id: ModelId


class TermStarted(Frozen):
    """A new leader's first entry: Raft commits it before anything else of the term (the no-op)."""

    kind: Literal["term_started"] = "term_started"
    term: int
    leader: str


Event = (
    ShardRegistered
    | ModelRegistered
    | InstancePlaced
    | StageLoaded
    | StageFailed
    | InstanceReady
    | InstanceRemoved
    | TermStarted
    | ShardLeaseExpired
    | ReplicasConfigured
    | NodeDrainRequested
    | ModelServed
    | ModelUnserved
)


class CommandOrigin(Frozen):
    """Who sent the command and its sequence number: a retry carries the same pair."""

    client_id: str
    sequence: int


class IndexedEvent(Frozen):
    index: int
    event: Annotated[Event, Field(discriminator="kind")]
    origin: CommandOrigin | None = None
