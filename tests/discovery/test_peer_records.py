"""TXT records and the peer table: pure logic, no network."""

import asyncio

import pytest

from discovery.peer import PROTOCOL_VERSION, PeerInfo, host_share, refusal_reason, split_address
from discovery.peer_table import PeerTable
from discovery.txt_record import TxtRecordError, from_properties, to_properties
from services.kernel.ids import NodeId

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def _shard(address: str = "10.0.0.1:52417", *, cluster: str = "alpha", version: int = PROTOCOL_VERSION) -> PeerInfo:
    return PeerInfo(
        cluster=cluster,
        role="shard",
        node_id=NodeId("node-a"),
        protocol_version=version,
        address=address,
        total_memory_bytes=16_000,
        available_memory_bytes=8_000,
        device="cpu",
        models=("smollm2-135m-instruct", "other"),
        work_per_second=3.25e9,
    )


def _encoded(peer: PeerInfo) -> dict[bytes, bytes | None]:
    return {key.encode(): value.encode() for key, value in to_properties(peer).items()}


def test_txt_round_trip() -> None:
    peer = _shard()
    assert from_properties(_encoded(peer), peer.address) == peer
    assert peer.shard_id == "node-a:52417"


def test_txt_without_shard_fields_for_a_coordinator() -> None:
    peer = PeerInfo(cluster="alpha", role="coordinator", node_id=NodeId("n"), protocol_version=1, address="127.0.0.1:1")
    assert "mem_total" not in to_properties(peer)
    assert from_properties(_encoded(peer), peer.address) == peer


@pytest.mark.parametrize(
    "properties",
    [
        {b"cluster": b"alpha", b"role": b"shard", b"node": b"n"},
        {b"cluster": b"alpha", b"role": b"printer", b"node": b"n", b"version": b"1"},
        {b"cluster": b"alpha", b"role": b"shard", b"node": b"n", b"version": b"one"},
        {b"cluster": b"\xff", b"role": b"shard", b"node": b"n", b"version": b"1"},
        {b"cluster": b"alpha", b"role": b"shard", b"node": b"n", b"version": b"1", b"speed": b"-1"},
        {b"cluster": b"alpha", b"role": b"shard", b"node": b"n", b"version": b"1", b"speed": b"nan"},
        {b"cluster": b"alpha", b"role": b"shard", b"node": b"n", b"version": b"1", b"speed": b"fast"},
    ],
)
def test_malformed_txt_is_refused(properties: dict[bytes, bytes | None]) -> None:
    with pytest.raises(TxtRecordError):
        from_properties(properties, "127.0.0.1:1")


def test_split_address() -> None:
    assert split_address("10.77.1.2:52417") == ("10.77.1.2", 52417)
    for bad in ("nohost", ":1", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="host:port"):
            split_address(bad)


def test_incompatible_version_has_a_reason() -> None:
    assert refusal_reason(_shard()) is None
    reason = refusal_reason(_shard(version=PROTOCOL_VERSION + 1))
    assert reason is not None
    assert "incompatible" in reason


def test_table_keeps_own_cluster_refuses_skew_and_forgets() -> None:
    async def scenario() -> None:
        table = PeerTable("alpha", own_address="10.0.0.9:1")
        table.offer(_shard("10.0.0.2:1", cluster="beta"))
        table.offer(_shard("10.0.0.9:1"))  # itself
        assert table.peers() == ()
        table.offer(_shard("10.0.0.3:1", version=PROTOCOL_VERSION + 1))
        assert table.peers() == ()
        assert [refused.address for refused in table.refused()] == ["10.0.0.3:1"]
        waiting = asyncio.create_task(table.wait_for_change(10))
        await asyncio.sleep(0)
        table.offer(_shard("10.0.0.1:1"))
        await asyncio.wait_for(waiting, 5)
        assert [peer.address for peer in table.peers("shard")] == ["10.0.0.1:1"]
        assert table.peers("coordinator") == ()
        table.remove("10.0.0.1:1")
        assert table.peers() == ()
        # A refused peer that upgrades is admitted.
        table.offer(_shard("10.0.0.3:1"))
        assert table.refused() == ()
        assert len(table.peers()) == 1

    asyncio.run(scenario())


def test_host_memory_is_split_among_the_shards_of_one_node() -> None:
    first = _shard("10.0.0.1:1").model_copy(update={"available_memory_bytes": 9_000})
    second = _shard("10.0.0.1:2").model_copy(update={"available_memory_bytes": 8_000})
    elsewhere = _shard("10.0.0.2:1").model_copy(update={"node_id": NodeId("node-b"), "available_memory_bytes": 5_000})
    shards = [first, second, elsewhere]
    assert host_share(first, shards) == 4_000
    assert host_share(second, shards) == 4_000
    assert host_share(elsewhere, shards) == 5_000
