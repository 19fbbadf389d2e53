"""Every event kind has its one-line summary, naming what it is about."""

import typing

import pytest

from services.cluster.event_summary import summarize_event
from services.cluster.events import (
    Event,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ModelServed,
    ModelUnserved,
    NodeDrainRequested,
    ReplicasConfigured,
    ShardLeaseExpired,
    ShardRegistered,
    StageFailed,
    StageLoaded,
    TermStarted,
)
from services.cluster.state import ModelSpec, RegisteredShard, StageAssignment, WeightCost
from services.kernel.ids import InstanceId, ModelId, NodeId, ShardId

pytestmark = pytest.mark.unit

COST = WeightCost(bytes=10, work=10)
SPEC = ModelSpec(
    model_id=ModelId("m"),
    num_layers=2,
    layers=(COST, COST),
    embedding=COST,
    head=COST,
    tied_embeddings=True,
    kv_bytes_per_layer=1,
)
EXAMPLES: list[tuple[Event, str]] = [
    (ModelServed(model=SPEC, instances=2), "model m served from now on (2 instances of 2 layers)"),
    (ModelUnserved(model_id=ModelId("m")), "model m unserved: its instances are removed and their streams end"),
    (
        ShardRegistered(
            shard=RegisteredShard(
                shard_id=ShardId("s1"),
                node_id=NodeId("n1"),
                address="127.0.0.1:5",
                available_memory_bytes=2**31,
                device="cpu",
            )
        ),
        "shard server s1 joined from node n1 at 127.0.0.1:5 (cpu, 2.0 GiB offered)",
    ),
    (
        ModelRegistered(
            model=ModelSpec(
                model_id=ModelId("m"),
                num_layers=2,
                layers=(COST, COST),
                embedding=COST,
                head=COST,
                tied_embeddings=True,
                kv_bytes_per_layer=1,
            )
        ),
        "model m registered (2 layers)",
    ),
    (
        InstancePlaced(
            instance_id=InstanceId("i1"),
            model_id=ModelId("m"),
            num_layers=30,
            stages=(
                StageAssignment(shard_id=ShardId("s1"), start_layer=0, end_layer=18),
                StageAssignment(shard_id=ShardId("s2"), start_layer=18, end_layer=30),
            ),
        ),
        "instance i1 of m placed over 2 shard(s) of 30 layers: s1 [0, 18), s2 [18, 30)",
    ),
    (StageLoaded(instance_id=InstanceId("i1"), shard_id=ShardId("s1")), "shard s1 loaded its layers of instance i1"),
    (
        StageFailed(instance_id=InstanceId("i1"), shard_id=ShardId("s1"), message="out of memory"),
        "shard s1 failed to load instance i1: out of memory",
    ),
    (InstanceReady(instance_id=InstanceId("i1")), "instance i1 is ready to serve"),
    (InstanceRemoved(instance_id=InstanceId("i1")), "instance i1 removed (its streams replay on another instance)"),
    (
        ShardLeaseExpired(shard_id=ShardId("s2")),
        "shard server s2 went silent: it left the cluster and its instances are re-placed",
    ),
    (
        ReplicasConfigured(voters=("a:1", "b:2"), learners=("c:3",)),
        "coordinator replicas: voters a:1, b:2; learners c:3",
    ),
    (NodeDrainRequested(node_id=NodeId("n1")), "node n1 is draining: its instances move to other shard servers"),
    (TermStarted(term=4, leader="a:1"), "a:1 leads the coordinators in term 4"),
]


@pytest.mark.parametrize(("event", "summary"), EXAMPLES, ids=[event.kind for event, _ in EXAMPLES])
def test_summary(event: Event, summary: str) -> None:
    assert summarize_event(event) == summary


def test_every_event_kind_has_an_example() -> None:
    kinds = {event_class.model_fields["kind"].default for event_class in typing.get_args(Event)}
    assert kinds == {event.kind for event, _ in EXAMPLES}
