"""The mlx-lm baselines of `make bench` are the mean of runs before and after the clusters."""

import pytest

from services.app.benchmark.baselines import BaselineFigures, averaged

pytestmark = pytest.mark.unit


def test_the_mean_of_two_runs_keeps_both_and_only_common_row_counts() -> None:
    before = BaselineFigures(10.0, {1: 10.0, 32: 100.0}, {1: 8.0, 32: 80.0})
    after = BaselineFigures(14.0, {1: 12.0, 32: 140.0, 64: 150.0}, {1: 10.0, 32: 100.0, 64: 120.0})

    mean = averaged((before, after))

    assert mean.single_stream_tokens_per_second == 12.0
    assert mean.batch_tokens_per_second == {1: 11.0, 32: 120.0}
    assert mean.batch_end_to_end_tokens_per_second == {1: 9.0, 32: 90.0}
    assert mean.runs == (before, after)
