"""restart_delay: the backoff `strata run` waits before restarting a child that died."""

import pytest

from services.app.supervision import (
    INITIAL_BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    STABLE_AFTER_SECONDS,
    restart_delay,
)

pytestmark = pytest.mark.unit


def test_the_first_exit_waits_the_initial_backoff() -> None:
    decision = restart_delay(consecutive_exits=0, uptime_seconds=1.0)
    assert decision.delay_seconds == INITIAL_BACKOFF_SECONDS
    assert decision.consecutive_exits == 1


def test_exits_in_a_row_double_the_wait_up_to_the_maximum() -> None:
    delays: list[float] = []
    exits = 0
    for _ in range(8):
        decision = restart_delay(consecutive_exits=exits, uptime_seconds=0.2)
        delays.append(decision.delay_seconds)
        exits = decision.consecutive_exits
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert exits == 8


def test_a_child_that_stayed_up_long_enough_starts_over_at_the_initial_backoff() -> None:
    decision = restart_delay(consecutive_exits=6, uptime_seconds=STABLE_AFTER_SECONDS)
    assert decision == restart_delay(consecutive_exits=0, uptime_seconds=0.0)


def test_a_very_long_crash_loop_stays_at_the_maximum() -> None:
    decision = restart_delay(consecutive_exits=10_000, uptime_seconds=0.0)
    assert decision.delay_seconds == MAX_BACKOFF_SECONDS
