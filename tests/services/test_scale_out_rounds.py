"""The scale-out figures of `make bench`: means over rounds, and each round's ratios reported beside them."""

import pytest

from services.app.benchmark.report import scale_out_from_rounds, scale_out_rounds_line

pytestmark = pytest.mark.unit


def test_figures_are_means_over_rounds_and_each_rounds_ratio_is_reported() -> None:
    rounds = (
        ({16: 50.0, 32: 60.0}, {16: 60.0, 32: 75.0}, {16: 70.0, 32: 90.0}),
        ({16: 60.0, 32: 70.0}, {16: 66.0, 32: 77.0}, {16: 84.0, 32: 98.0}),
    )

    figures = scale_out_from_rounds(rounds, in_namespaces=True)

    assert figures.one_host == {16: 55.0, 32: 65.0}
    assert figures.two_hosts == {16: 63.0, 32: 76.0}
    assert figures.two_instances == {16: 77.0, 32: 94.0}
    line = scale_out_rounds_line(figures)
    assert "means over 2 rounds" in line
    assert "at 16, pipelined 1.20x, 1.10x, an instance on each 1.40x, 1.40x" in line
    assert "at 32, pipelined 1.25x, 1.10x, an instance on each 1.50x, 1.40x" in line


def test_a_concurrency_missing_from_a_round_is_left_out_of_the_means() -> None:
    rounds = (({16: 50.0, 32: 60.0}, {16: 60.0}, {16: 70.0}), ({16: 50.0}, {16: 60.0}, {16: 70.0}))

    figures = scale_out_from_rounds(rounds, in_namespaces=False)

    assert figures.one_host == {16: 50.0}
    assert figures.two_hosts == {16: 60.0}
