"""When `strata run` restarts a child that died: systemd's `Restart=on-failure` with a growing backoff.

Pure: the run loop asks `restart_delay` after each exit and keeps the returned count.
"""

from dataclasses import dataclass

INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
STABLE_AFTER_SECONDS = 30.0
"""A child that stayed up this long counts as healthy again: its next exit restarts it at once-ish."""


@dataclass(frozen=True, kw_only=True)
class RestartDecision:
    delay_seconds: float
    consecutive_exits: int
    """Exits in a row without a stable run between them, this one included."""


def restart_delay(*, consecutive_exits: int, uptime_seconds: float) -> RestartDecision:
    """The wait before restarting a child that exited after `uptime_seconds`.

    `consecutive_exits`: the count from the previous decision for this child (0 before any). The wait
    doubles with each exit in a row (0.5 s, 1 s, 2 s ... up to 10 s), so a child that cannot start does
    not spin, and resets once the child ran for `STABLE_AFTER_SECONDS`.
    """
    exits = 1 if uptime_seconds >= STABLE_AFTER_SECONDS else consecutive_exits + 1
    delay = min(MAX_BACKOFF_SECONDS, INITIAL_BACKOFF_SECONDS * 2 ** min(exits - 1, 16))
    return RestartDecision(delay_seconds=delay, consecutive_exits=exits)
