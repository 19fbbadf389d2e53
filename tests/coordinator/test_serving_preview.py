"""Serving at run time, purely: `preview_serving` (where a model would go, or the bytes it lacks) and
the planner's moves after `ModelServed` / `ModelUnserved`."""

import pytest

from coordinator.planner import PlaceInstance, RemoveInstance, plan
from coordinator.serving_preview import free_shards, missing_memory_bytes, preview_serving
from services.cluster.events import InstancePlaced, InstanceReady, ModelServed, ModelUnserved, ShardRegistered
from services.cluster.state import ClusterState, StageAssignment
from services.kernel.ids import InstanceId, ModelId, ShardId
from tests.coordinator.builders import MODEL_ID, apply_all, apply_next, ranges, shard_server, tiny_model

pytestmark = pytest.mark.unit

SECOND = ModelId("second")


def cluster_with_ready_tiny(shard_count: int, memory: int = 10_000) -> ClusterState:
    """`shard_count` shards; the tiny model (4 layers of 100 bytes) ready on shard-0 and shard-1."""
    state = apply_all(
        ClusterState(),
        [*(ShardRegistered(shard=shard_server(f"shard-{index}", memory)) for index in range(shard_count))],
    )
    state = apply_next(state, ModelServed(model=tiny_model(), instances=1))
    action = plan(state, minimum_shards=1)
    assert isinstance(action, PlaceInstance)
    # Two stages by hand, so the other shards stay free.
    stages = (
        StageAssignment(shard_id=ShardId("shard-0"), start_layer=0, end_layer=2),
        StageAssignment(shard_id=ShardId("shard-1"), start_layer=2, end_layer=4),
    )
    state = apply_next(
        state, InstancePlaced(instance_id=InstanceId("tiny@1"), model_id=MODEL_ID, num_layers=4, stages=stages)
    )
    return apply_next(state, InstanceReady(instance_id=InstanceId("tiny@1")))


def test_preview_places_a_second_model_on_the_free_shard_servers_only() -> None:
    state = cluster_with_ready_tiny(4)

    preview = preview_serving(state, tiny_model("second", num_layers=2), instances=1)

    assert preview.fits
    assert preview.missing_bytes == 0
    assert preview.reason is None
    assert [(stage.shard_id, stage.start_layer, stage.end_layer) for stage in preview.stages] == [
        ("shard-2", 0, 1),
        ("shard-3", 1, 2),
    ]
    assert [stage.memory_bytes for stage in preview.stages] == [100, 100]
    assert preview.stages[0].node_id == "node-of-shard-2"


def test_preview_with_two_instances_gives_each_its_own_shard_servers() -> None:
    state = cluster_with_ready_tiny(4)

    preview = preview_serving(state, tiny_model("second", num_layers=2), instances=2)

    assert preview.fits
    assert [(stage.shard_id, stage.start_layer, stage.end_layer) for stage in preview.stages] == [
        ("shard-2", 0, 2),
        ("shard-3", 0, 2),
    ]


def test_preview_of_a_model_too_large_says_how_many_bytes_are_missing() -> None:
    state = cluster_with_ready_tiny(3, memory=500)

    preview = preview_serving(state, tiny_model("second", num_layers=8), instances=1)

    # 8 layers of 100 bytes on the one free shard server of 500 bytes.
    assert not preview.fits
    assert preview.missing_bytes == 300
    assert preview.reason is not None and "300 bytes are missing" in preview.reason


def test_preview_counts_every_copy_that_finds_no_shard_server() -> None:
    state = cluster_with_ready_tiny(3, memory=500)

    preview = preview_serving(state, tiny_model("second", num_layers=2), instances=3)

    # The first copy fits on shard-2; the other two find no free shard server at all.
    assert not preview.fits
    assert preview.missing_bytes == 2 * 200
    assert [stage.shard_id for stage in preview.stages] == ["shard-2"]


def test_missing_bytes_count_a_layer_that_fits_no_shard_server_alone() -> None:
    # 2 shard servers of 150 bytes offer 300, more than the 2 x 100... but a layer of 200 fits neither.
    model = tiny_model("second", num_layers=1, layer_bytes=200)
    shards = [shard_server("shard-0", 150), shard_server("shard-1", 150)]

    assert missing_memory_bytes(model, shards) == 2 * 50


def test_free_shards_skip_draining_nodes_and_held_shards() -> None:
    state = cluster_with_ready_tiny(4)
    state = state.model_copy(update={"draining_nodes": ("node-of-shard-3",)})

    assert [shard.shard_id for shard in free_shards(state)] == ["shard-2"]


def test_planner_places_a_served_model_beside_the_ready_one() -> None:
    state = apply_next(cluster_with_ready_tiny(4), ModelServed(model=tiny_model("second", num_layers=2), instances=1))

    action = plan(state, minimum_shards=1)

    assert isinstance(action, PlaceInstance)
    assert action.model_id == SECOND
    assert ranges(action.placement.stages) == [("shard-2", 0, 1), ("shard-3", 1, 2)]


def test_planner_keeps_the_served_instance_count() -> None:
    state = apply_next(cluster_with_ready_tiny(4), ModelServed(model=tiny_model("second", num_layers=2), instances=2))

    action = plan(state, minimum_shards=1)

    assert isinstance(action, PlaceInstance)
    assert ranges(action.placement.stages) == [("shard-2", 0, 2)]


def test_planner_never_takes_another_models_shard_servers() -> None:
    state = apply_next(cluster_with_ready_tiny(2), ModelServed(model=tiny_model("second", num_layers=2), instances=1))

    action = plan(state, minimum_shards=1)

    assert action is not None and not isinstance(action, PlaceInstance)


def test_planner_removes_the_instances_of_an_unserved_model() -> None:
    state = apply_next(cluster_with_ready_tiny(2), ModelUnserved(model_id=MODEL_ID))

    action = plan(state, minimum_shards=1)

    assert isinstance(action, RemoveInstance)
    assert action.instance_id == InstanceId("tiny@1")
    assert "no longer served" in action.reason
