"""Small cluster pieces shared by the coordinator tests: a tiny model, shard servers, states."""

from collections.abc import Sequence

from services.cluster.apply import apply
from services.cluster.events import (
    Event,
    IndexedEvent,
    InstancePlaced,
    ModelRegistered,
    ShardRegistered,
)
from services.cluster.state import ClusterState, ModelSpec, RegisteredShard, StageAssignment, WeightCost
from services.kernel.ids import InstanceId, ModelId, NodeId, ShardId

MODEL_ID = ModelId("tiny")
INSTANCE_ID = InstanceId("tiny@4")


def tiny_model(
    model_id: str = "tiny",
    *,
    num_layers: int = 4,
    layer_bytes: int = 100,
    layer_work: int = 10,
    embedding: WeightCost | None = None,
    head: WeightCost | None = None,
    tied_embeddings: bool = False,
    kv_bytes_per_layer: int = 0,
) -> ModelSpec:
    """A model of `num_layers` equal layers; embedding and head default to free."""
    return ModelSpec(
        model_id=ModelId(model_id),
        num_layers=num_layers,
        layers=tuple(WeightCost(bytes=layer_bytes, work=layer_work) for _ in range(num_layers)),
        embedding=embedding or WeightCost(bytes=0, work=0),
        head=head or WeightCost(bytes=0, work=0),
        tied_embeddings=tied_embeddings,
        kv_bytes_per_layer=kv_bytes_per_layer,
    )


def shard_server(shard_id: str = "shard-a", memory: int = 10_000) -> RegisteredShard:
    return RegisteredShard(
        shard_id=ShardId(shard_id),
        node_id=NodeId(f"node-of-{shard_id}"),
        address=f"{shard_id}.local:50051",
        available_memory_bytes=memory,
        device="cpu",
    )


def apply_next(state: ClusterState, event: Event) -> ClusterState:
    """Applies `event` at the next index, as the replica's log does."""
    return apply(state, IndexedEvent(index=state.last_index + 1, event=event))


def apply_all(state: ClusterState, events: list[Event]) -> ClusterState:
    for event in events:
        state = apply_next(state, event)
    return state


def two_stage_placement(instance_id: InstanceId = INSTANCE_ID) -> InstancePlaced:
    """The tiny model split over shard-a [0, 2) and shard-b [2, 4)."""
    return InstancePlaced(
        instance_id=instance_id,
        model_id=MODEL_ID,
        num_layers=4,
        stages=(
            StageAssignment(shard_id=ShardId("shard-a"), start_layer=0, end_layer=2),
            StageAssignment(shard_id=ShardId("shard-b"), start_layer=2, end_layer=4),
        ),
    )


def populated_state() -> ClusterState:
    """Two shards, the tiny model and one loading instance of it (last_index 4)."""
    return apply_all(
        ClusterState(),
        [
            ShardRegistered(shard=shard_server("shard-a")),
            ShardRegistered(shard=shard_server("shard-b")),
            ModelRegistered(model=tiny_model()),
            two_stage_placement(),
        ],
    )


def fields_other_than(state: ClusterState, *changed: str) -> dict[str, object]:
    """The state's fields, less `changed` and `last_index` (which every event advances)."""
    return {key: value for key, value in state.model_dump().items() if key not in {*changed, "last_index"}}


def ranges(stages: Sequence[StageAssignment]) -> list[tuple[str, int, int]]:
    """(shard, start, end) of each stage, for comparing placements."""
    return [(stage.shard_id, stage.start_layer, stage.end_layer) for stage in stages]
