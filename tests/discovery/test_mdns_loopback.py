"""Real zeroconf on loopback only (127.0.0.1): announce, browse, update, goodbye, cluster separation
and version refusal, between `Discovery` objects of one process."""

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.mdns import RECORD_TTL_SECONDS
from discovery.peer import PROTOCOL_VERSION, PeerInfo, Role
from discovery.peer_source import Discovery, DiscoveryOptions
from services.kernel.ids import NodeId
from tests.processes import free_port

pytestmark = [pytest.mark.timeout(90)]

WAIT_SECONDS = 30.0


def _peer(
    cluster: str, role: Role, port: int, *, version: int = PROTOCOL_VERSION, models: tuple[str, ...] = ()
) -> PeerInfo:
    return PeerInfo(
        cluster=cluster,
        role=role,
        node_id=NodeId(f"node-{port}"),
        protocol_version=version,
        address=f"127.0.0.1:{port}",
        total_memory_bytes=1000,
        available_memory_bytes=500,
        device="cpu",
        models=models,
    )


async def _until(discovery: Discovery, condition: Callable[[], bool]) -> None:
    """Waits (bounded) until `condition` holds after some change of the peer set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"condition not met; peers: {discovery.peers()}, refused: {discovery.refused()}")
        await discovery.wait_for_change(min(remaining, 1.0))


@pytest.mark.unit
def test_announce_browse_update_goodbye_and_isolation() -> None:
    cluster = f"test-{secrets.token_hex(4)}"
    options = DiscoveryOptions(cluster=cluster, interfaces=("127.0.0.1",))

    async def scenario() -> None:
        browser = Discovery(options, own=None)
        coordinator = Discovery(options, own=_peer(cluster, "coordinator", 40001))
        shard = Discovery(options, own=_peer(cluster, "shard", 40002))
        stranger = Discovery(
            DiscoveryOptions(cluster=f"{cluster}-other", interfaces=("127.0.0.1",)),
            own=_peer(f"{cluster}-other", "shard", 40003),
        )
        skewed = Discovery(options, own=_peer(cluster, "shard", 40004, version=PROTOCOL_VERSION + 7))
        started = [browser, coordinator, shard, stranger, skewed]
        try:
            for discovery in started:
                await discovery.start()
            await _until(browser, lambda: len(browser.peers()) == 2 and len(browser.refused()) == 1)
            assert [peer.address for peer in browser.peers("shard")] == ["127.0.0.1:40002"]
            assert browser.peers("coordinator")[0].role == "coordinator"
            assert browser.refused()[0].address == "127.0.0.1:40004"
            await _until(shard, lambda: len(shard.peers("coordinator")) == 1)
            assert shard.peers("shard") == ()  # not itself
            await shard.update_self(_peer(cluster, "shard", 40002, models=("m1",)))
            await _until(browser, lambda: browser.peers("shard")[0].models == ("m1",))
            await shard.stop()
            started.remove(shard)
            await _until(browser, lambda: browser.peers("shard") == ())
            assert len(browser.peers("coordinator")) == 1
            assert stranger.peers() == ()
        finally:
            for discovery in started:
                await discovery.stop()

    asyncio.run(scenario())


@pytest.mark.process
@pytest.mark.timeout(180)
def test_a_peer_killed_without_goodbye_expires(tmp_path: Path) -> None:
    cluster = f"expiry-{secrets.token_hex(4)}"
    port = free_port()
    log_path = tmp_path / "announce.log"
    with log_path.open("ab") as log:
        announcer = subprocess.Popen(
            [sys.executable, "-m", "tests.discovery.announce", cluster, "coordinator", str(port), "1", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def scenario() -> None:
        browser = Discovery(DiscoveryOptions(cluster=cluster, interfaces=("127.0.0.1",)), own=None)
        await browser.start()
        try:
            await _until(browser, lambda: len(browser.peers("coordinator")) == 1)
            announcer.kill()  # SIGKILL: no goodbye packet
            announcer.wait(timeout=10)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8 * RECORD_TTL_SECONDS  # dropped after about 3 TTLs
            while browser.peers() and loop.time() < deadline:
                await browser.wait_for_change(1.0)
            assert browser.peers() == (), log_path.read_text()
        finally:
            await browser.stop()

    try:
        asyncio.run(scenario())
    finally:
        if announcer.poll() is None:
            announcer.kill()
            announcer.wait(timeout=10)
