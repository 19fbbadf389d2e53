"""Placement over shards of different measured speeds: a fast device takes most of the work."""

import pytest

from coordinator.placement import Placement, place, slowest_stage_work, work_multipliers
from services.cluster.state import RegisteredShard
from services.kernel.ids import ShardId
from tests.coordinator.builders import ranges, shard_server, tiny_model

pytestmark = pytest.mark.unit


def shard_at(shard_id: str, work_per_second: float, memory: int = 10_000) -> RegisteredShard:
    return shard_server(shard_id, memory).model_copy(update={"work_per_second": work_per_second})


def test_noise_between_shards_of_one_kind_changes_nothing() -> None:
    # Up to 3x apart, as a shard measuring on a busy core can be.
    shards = [shard_at("shard-a", 3.1e9), shard_at("shard-b", 1.3e9), shard_at("shard-c", 3.6e9)]

    assert work_multipliers(shards) == {"shard-a": 1, "shard-b": 1, "shard-c": 1}
    result = place(tiny_model(num_layers=6), shards)

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("shard-a", 0, 2), ("shard-b", 2, 4), ("shard-c", 4, 6)]
    assert "weighted" not in result.explanation


def test_a_gpu_ten_times_faster_takes_most_of_the_layers() -> None:
    cpu, gpu = shard_at("cpu-host", 3e9), shard_at("gpu-host", 3e10)

    assert work_multipliers([cpu, gpu]) == {"cpu-host": 8, "gpu-host": 1}
    result = place(tiny_model(num_layers=18), [cpu, gpu])

    assert isinstance(result, Placement)
    # 2 layers on the CPU count 2 x 8 = 16 units; 16 layers on the GPU count 16.
    assert ranges(result.stages) == [("cpu-host", 0, 2), ("gpu-host", 2, 18)]
    assert result.slowest_stage_work == 160
    assert "cpu-host x8" in result.explanation


def test_a_slow_host_still_adds_memory_when_the_model_needs_it() -> None:
    # The GPU holds 10 of 12 layers; the CPU host must take the rest, however slow it is.
    cpu, gpu = shard_at("cpu-host", 1e9, memory=10_000), shard_at("gpu-host", 1e11, memory=1_000)

    result = place(tiny_model(num_layers=12), [cpu, gpu])

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("cpu-host", 0, 2), ("gpu-host", 2, 12)]


def test_unmeasured_shards_count_as_fast_as_the_fastest() -> None:
    shards = [shard_at("shard-a", 0.0), shard_at("shard-b", 4e9)]

    assert work_multipliers(shards) == {"shard-a": 1, "shard-b": 1}
    assert work_multipliers([shard_at("shard-a", 0.0), shard_at("shard-b", 0.0)]) == {"shard-a": 1, "shard-b": 1}


def test_the_slowdown_is_capped() -> None:
    assert work_multipliers([shard_at("slow", 1.0), shard_at("fast", 1e12)])[ShardId("slow")] == 1024


def test_three_times_slower_is_another_class() -> None:
    assert work_multipliers([shard_at("slow", 1e9), shard_at("fast", 3e9)])[ShardId("slow")] == 4


def test_an_existing_placement_is_weighed_the_same_way() -> None:
    cpu, gpu = shard_at("cpu-host", 3e9), shard_at("gpu-host", 3e10)
    model = tiny_model(num_layers=18)
    result = place(model, [cpu, gpu])

    assert isinstance(result, Placement)
    assert slowest_stage_work(model, result.stages, work_multipliers([cpu, gpu])) == result.slowest_stage_work
    assert slowest_stage_work(model, result.stages) == 160  # unweighted: the GPU's 16 layers
