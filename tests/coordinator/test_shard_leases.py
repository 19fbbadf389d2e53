"""Shard leases on the leader: renewals keep a shard, silence expires it, a new leader starts afresh."""

import pytest

from coordinator.shard_leases import ShardLeases, expired_shards
from services.kernel.ids import ShardId

pytestmark = pytest.mark.unit

A, B = ShardId("shard-a"), ShardId("shard-b")


def test_a_recently_renewed_shard_is_live() -> None:
    assert expired_shards([A], {A: 100.0}, leading_since=0.0, now=105.0, lease_seconds=10.0) == []


def test_a_shard_silent_for_longer_than_the_lease_has_expired() -> None:
    assert expired_shards([A, B], {A: 100.0, B: 89.0}, leading_since=0.0, now=100.0, lease_seconds=10.0) == [B]


def test_a_new_leader_gives_every_known_shard_a_full_lease() -> None:
    assert expired_shards([A, B], {A: 10.0}, leading_since=95.0, now=100.0, lease_seconds=10.0) == []
    assert expired_shards([A, B], {A: 10.0}, leading_since=95.0, now=106.0, lease_seconds=10.0) == [A, B]


def test_the_lease_table_renews_and_forgets() -> None:
    leases = ShardLeases(lease_seconds=10.0)
    leases.start_leading(0.0)
    leases.renew(A, 50.0)

    assert leases.expired([A, B], 55.0) == [B]
    leases.forget(A)
    assert leases.expired([A], 55.0) == [A]
