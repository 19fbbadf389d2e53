"""place(model, shards): contiguous stages that fit memory, with the slowest stage as light as possible."""

import itertools
import random
from collections.abc import Sequence

import pytest

from coordinator.placement import Placement, PlacementRefusal, place
from services.cluster.state import ModelSpec, RegisteredShard, WeightCost
from services.kernel.ids import ModelId
from tests.coordinator.builders import ranges, shard_server, tiny_model

pytestmark = pytest.mark.unit

RANDOM_CASES = 400


# --- Independent reference: the cost rules as the module docstring states them. ---


def stage_bytes(model: ModelSpec, start: int, end: int) -> int:
    total = sum(layer.bytes for layer in model.layers[start:end]) + model.kv_bytes_per_layer * (end - start)
    if start == 0:
        total += model.embedding.bytes
    if end == model.num_layers:
        total += model.head.bytes
        # A tied last stage holds its own copy of the embedding, unless it is also the first stage.
        if model.tied_embeddings and start != 0:
            total += model.embedding.bytes
    return total


def stage_work(model: ModelSpec, start: int, end: int) -> int:
    work = sum(layer.work for layer in model.layers[start:end])
    if start == 0:
        work += model.embedding.work
    if end == model.num_layers:
        work += model.head.work
    return work


def all_splits(num_layers: int, stages: int) -> list[list[tuple[int, int]]]:
    """Every way to cut [0, num_layers) into `stages` non-empty contiguous ranges."""
    splits: list[list[tuple[int, int]]] = []
    for cuts in itertools.combinations(range(1, num_layers), stages - 1):
        bounds = [0, *cuts, num_layers]
        splits.append(list(itertools.pairwise(bounds)))
    return splits


def best_slowest_work(model: ModelSpec, shards: Sequence[RegisteredShard]) -> int | None:
    """Brute force: the least slowest-stage work over the fitting splits, or None if none fits."""
    used = shards[: model.num_layers]
    best: int | None = None
    for split in all_splits(model.num_layers, len(used)):
        fits = all(
            stage_bytes(model, start, end) <= shard.available_memory_bytes
            for (start, end), shard in zip(split, used, strict=True)
        )
        if fits:
            slowest = max(stage_work(model, start, end) for start, end in split)
            best = slowest if best is None else min(best, slowest)
    return best


def assert_well_formed(model: ModelSpec, shards: Sequence[RegisteredShard], placement: Placement) -> None:
    stages = placement.stages
    assert len(stages) == min(len(shards), model.num_layers)
    # Shards keep their given order: it is the ring order.
    assert [stage.shard_id for stage in stages] == [shard.shard_id for shard in shards[: len(stages)]]
    assert stages[0].start_layer == 0
    assert stages[-1].end_layer == model.num_layers
    for before, after in itertools.pairwise(stages):
        assert before.end_layer == after.start_layer
    for stage, shard in zip(stages, shards, strict=False):
        assert stage.end_layer - stage.start_layer >= 1
        assert stage.status == "assigned"
        assert stage_bytes(model, stage.start_layer, stage.end_layer) <= shard.available_memory_bytes
    assert placement.slowest_stage_work == max(stage_work(model, s.start_layer, s.end_layer) for s in stages)


def random_model(rng: random.Random, index: int) -> ModelSpec:
    num_layers = rng.randint(1, 7)
    return ModelSpec(
        model_id=ModelId(f"random-{index}"),
        num_layers=num_layers,
        layers=tuple(WeightCost(bytes=rng.randint(1, 50), work=rng.randint(1, 50)) for _ in range(num_layers)),
        embedding=WeightCost(bytes=rng.randint(0, 60), work=rng.randint(0, 20)),
        head=WeightCost(bytes=rng.randint(0, 60), work=rng.randint(0, 120)),
        tied_embeddings=rng.random() < 0.5,
        kv_bytes_per_layer=rng.randint(0, 10),
    )


# --- Shape of a placement. ---


def test_one_shard_takes_every_layer() -> None:
    model = tiny_model(num_layers=5)

    result = place(model, [shard_server("shard-a")])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 5)]


def test_every_shard_gets_a_contiguous_non_empty_stage_in_shard_order() -> None:
    model = tiny_model(num_layers=10)
    # Deliberately not sorted by id: place must keep the order it is given.
    shards = [shard_server("shard-c"), shard_server("shard-a"), shard_server("shard-b")]

    result = place(model, shards)

    assert isinstance(result, Placement)
    assert_well_formed(model, shards, result)


def test_more_shards_than_layers_uses_one_shard_per_layer() -> None:
    model = tiny_model(num_layers=3)
    shards = [shard_server(f"shard-{letter}") for letter in "abcde"]

    result = place(model, shards)

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 1), ("shard-b", 1, 2), ("shard-c", 2, 3)]


def test_equal_layers_on_equal_shards_split_evenly() -> None:
    model = tiny_model(num_layers=8)

    result = place(model, [shard_server("shard-a"), shard_server("shard-b")])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 4), ("shard-b", 4, 8)]
    assert result.slowest_stage_work == 40


def test_explanation_lists_each_shards_range() -> None:
    result = place(tiny_model(num_layers=4), [shard_server("shard-a"), shard_server("shard-b")])

    assert isinstance(result, Placement)
    assert "shard-a: [0, 2)" in result.explanation
    assert "shard-b: [2, 4)" in result.explanation


# --- Work balance. ---


def test_lm_head_work_moves_layers_off_the_last_shard() -> None:
    # A head that weighs 8 layers: with 30 layers on two equal shards, 19 + (11 + 8) is the best split.
    model = tiny_model(num_layers=30, layer_work=10, head=WeightCost(bytes=0, work=80))

    result = place(model, [shard_server("shard-a", 10**9), shard_server("shard-b", 10**9)])

    assert isinstance(result, Placement)
    first, last = result.stages
    assert last.end_layer - last.start_layer < first.end_layer - first.start_layer
    assert ranges(result.stages) == [("shard-a", 0, 19), ("shard-b", 19, 30)]
    assert result.slowest_stage_work == 190


def test_embedding_work_moves_layers_off_the_first_shard() -> None:
    model = tiny_model(num_layers=10, layer_work=10, embedding=WeightCost(bytes=0, work=40))

    result = place(model, [shard_server("shard-a", 10**9), shard_server("shard-b", 10**9)])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 3), ("shard-b", 3, 10)]


def test_random_models_get_the_least_slowest_stage_that_fits() -> None:
    # Seeded, bounded search against brute force over every split.
    rng = random.Random(20240601)
    placed = refused = 0
    for index in range(RANDOM_CASES):
        model = random_model(rng, index)
        shard_count = rng.randint(1, 5)
        per_shard = sum(layer.bytes for layer in model.layers) // shard_count
        shards = [
            shard_server(f"shard-{position}", rng.randint(per_shard // 2, 3 * per_shard + 150))
            for position in range(shard_count)
        ]

        expected = best_slowest_work(model, shards)
        result = place(model, shards)

        if expected is None:
            assert isinstance(result, PlacementRefusal), (model, shards, result)
            refused += 1
        else:
            assert isinstance(result, Placement), (model, shards, result)
            assert_well_formed(model, shards, result)
            assert result.slowest_stage_work == expected, (model, shards, result)
            placed += 1
    # The generator must exercise both outcomes, or the check above proves little.
    assert placed > RANDOM_CASES // 4
    assert refused > RANDOM_CASES // 20


# --- Memory. ---


def test_memory_pushes_layers_to_the_larger_shard() -> None:
    # Work alone would split 3/3; shard-a can hold only two layers.
    model = tiny_model(num_layers=6, layer_bytes=100)

    result = place(model, [shard_server("shard-a", 200), shard_server("shard-b", 10_000)])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 2), ("shard-b", 2, 6)]


def test_first_stage_counts_the_embedding() -> None:
    model = tiny_model(num_layers=4, layer_bytes=100, embedding=WeightCost(bytes=150, work=0))

    result = place(model, [shard_server("shard-a", 260), shard_server("shard-b", 10_000)])

    # 150 + 100 fits in 260; 150 + 200 would not.
    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 1), ("shard-b", 1, 4)]


def test_last_stage_counts_the_head() -> None:
    model = tiny_model(num_layers=4, layer_bytes=100, head=WeightCost(bytes=150, work=0))

    result = place(model, [shard_server("shard-a", 10_000), shard_server("shard-b", 260)])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 3), ("shard-b", 3, 4)]


def test_tied_embeddings_count_again_on_the_last_stage() -> None:
    embedding = WeightCost(bytes=150, work=0)
    untied = tiny_model(num_layers=4, layer_bytes=100, embedding=embedding)
    tied = tiny_model(num_layers=4, layer_bytes=100, embedding=embedding, tied_embeddings=True)
    # shard-b holds two layers (200), but not two layers and the embedding (350).
    shards = [shard_server("shard-a", 10_000), shard_server("shard-b", 300)]

    untied_result = place(untied, shards)
    tied_result = place(tied, shards)

    assert isinstance(untied_result, Placement)
    assert isinstance(tied_result, Placement)
    assert ranges(untied_result.stages) == [("shard-a", 0, 2), ("shard-b", 2, 4)]
    assert ranges(tied_result.stages) == [("shard-a", 0, 3), ("shard-b", 3, 4)]


def test_tied_embeddings_count_once_on_a_single_stage() -> None:
    model = tiny_model(num_layers=2, layer_bytes=100, embedding=WeightCost(bytes=150, work=0), tied_embeddings=True)

    assert isinstance(place(model, [shard_server("shard-a", 350)]), Placement)
    assert isinstance(place(model, [shard_server("shard-a", 349)]), PlacementRefusal)


def test_kv_room_is_counted_per_layer() -> None:
    model = tiny_model(num_layers=4, layer_bytes=100, kv_bytes_per_layer=50)

    # Three layers would need 450 bytes with their KV room; two need 300.
    result = place(model, [shard_server("shard-a", 10_000), shard_server("shard-b", 449)])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 2), ("shard-b", 2, 4)]


def test_exactly_full_memory_fits() -> None:
    model = tiny_model(num_layers=2, layer_bytes=100, kv_bytes_per_layer=10)

    result = place(model, [shard_server("shard-a", 110), shard_server("shard-b", 110)])

    assert isinstance(result, Placement)


# --- Refusals. ---


def test_no_shards_is_refused() -> None:
    result = place(tiny_model(), [])

    assert isinstance(result, PlacementRefusal)
    assert "no shard server" in result.reason


def test_a_model_that_does_not_fit_is_refused_naming_the_model_and_the_bytes() -> None:
    model = tiny_model("big-model", num_layers=4, layer_bytes=100, embedding=WeightCost(bytes=30, work=0))

    result = place(model, [shard_server("shard-a", 150), shard_server("shard-b", 150)])

    assert isinstance(result, PlacementRefusal)
    assert "big-model" in result.reason
    assert "430 bytes" in result.reason  # 4 x 100 layers + 30 embedding
    assert "shard-a has 150 bytes" in result.reason
    assert "300" in result.reason  # offered in all


def test_a_single_layer_larger_than_every_shard_is_refused() -> None:
    model = tiny_model(num_layers=3, layer_bytes=500)

    result = place(model, [shard_server(f"shard-{letter}", 499) for letter in "abc"])

    assert isinstance(result, PlacementRefusal)
    assert "largest layer 500 bytes" in result.reason


def test_a_spec_with_missing_layers_is_refused() -> None:
    model = tiny_model(num_layers=4).model_copy(update={"num_layers": 5})

    result = place(model, [shard_server("shard-a")])

    assert isinstance(result, PlacementRefusal)
    assert "4 of 5 layers" in result.reason


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4])
def test_placement_is_deterministic(shard_count: int) -> None:
    model = tiny_model(num_layers=7, head=WeightCost(bytes=10, work=25))
    shards = [shard_server(f"shard-{position}") for position in range(shard_count)]

    assert place(model, shards) == place(model, shards)


def test_sliding_layers_reserve_the_room_counted_for_them() -> None:
    # Layers 0-2 slide (room 50 each), layer 3 holds the whole context (room 400): 700 on one shard.
    model = tiny_model(num_layers=4, kv_bytes_per_layer=400).model_copy(
        update={"layer_kv_bytes": (50, 50, 50, 400), "kv_max_sequences": 32}
    )

    assert isinstance(place(model, [shard_server("shard-a", memory=4 * 100 + 550)]), Placement)
    assert isinstance(place(model, [shard_server("shard-a", memory=4 * 100 + 549)]), PlacementRefusal)
    # Without per-layer room every layer would reserve the full 400.
    assert isinstance(
        place(tiny_model(num_layers=4, kv_bytes_per_layer=400), [shard_server("shard-a", 950)]), PlacementRefusal
    )
