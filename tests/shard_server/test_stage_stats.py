"""Percentiles of the first shard's per-hop overhead, as GetStats reports them."""

import pytest

from shard_server.stage_state import StageStats

pytestmark = pytest.mark.unit


def stats_with(overheads: tuple[float, ...]) -> StageStats:
    return StageStats(hop_overheads=overheads)


def test_no_steps_give_zero() -> None:
    assert stats_with(()).hop_overhead_percentile(50) == 0.0


@pytest.mark.parametrize(("percent", "expected"), [(50, 0.3), (99, 1.0), (100, 1.0), (1, 0.1)])
def test_nearest_rank_percentiles(percent: float, expected: float) -> None:
    stats = stats_with((0.5, 0.1, 1.0, 0.3, 0.2))

    assert stats.hop_overhead_percentile(percent) == expected
