"""Shard server leases, held in the leader's memory (never in the log): each RegisterShard renews
one; a lease not renewed for `lease_seconds` has expired, and the leader logs ShardLeaseExpired.

A new leader starts every known shard's lease afresh, so a leader change never expires a shard
that was registering with the previous leader.
"""

from collections.abc import Iterable, Mapping

from services.kernel.ids import ShardId

DEFAULT_SHARD_LEASE_SECONDS = 10.0
"""Five missed registrations (shards register every 2 s)."""


def expired_shards(
    known: Iterable[ShardId],
    last_renewed: Mapping[ShardId, float],
    leading_since: float,
    now: float,
    lease_seconds: float,
) -> list[ShardId]:
    """Known shards whose last renewal (or the start of this leadership, if later) is too old."""
    return sorted(
        shard_id
        for shard_id in known
        if now - max(last_renewed.get(shard_id, leading_since), leading_since) > lease_seconds
    )


class ShardLeases:
    def __init__(self, lease_seconds: float = DEFAULT_SHARD_LEASE_SECONDS) -> None:
        self._lease_seconds = lease_seconds
        self._last_renewed: dict[ShardId, float] = {}
        self._leading_since = 0.0
        self.expiries = 0
        """Leases this replica found expired since it started (`strata_coordinator_shard_lease_expiries_total`)."""

    def renew(self, shard_id: ShardId, now: float) -> None:
        self._last_renewed[shard_id] = now

    def start_leading(self, now: float) -> None:
        self._leading_since = now

    def expired(self, known: Iterable[ShardId], now: float) -> list[ShardId]:
        return expired_shards(known, self._last_renewed, self._leading_since, now, self._lease_seconds)

    def forget(self, shard_id: ShardId) -> None:
        self._last_renewed.pop(shard_id, None)

    def expire(self, shard_id: ShardId) -> None:
        """The shard's expiry is committed: forget its lease and count it."""
        self.forget(shard_id)
        self.expiries += 1
