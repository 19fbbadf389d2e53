"""Static `--peer` discovery over real gRPC on 127.0.0.1: a listed peer is identified with `Peer.Identify`,
an incompatible one refused, a silent one dropped; and the discovery flags parse."""

import argparse
import asyncio
import secrets
from collections.abc import Callable

import pytest

from discovery.cli_options import add_discovery_arguments, discovery_options
from discovery.identity_service import PEER_SERVICE_NAME, add_peer_service
from discovery.peer import PROTOCOL_VERSION, PeerInfo
from discovery.peer_source import Discovery, DiscoveryOptions
from services.kernel.ids import NodeId
from services.platform.grpc_server import GrpcServer

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _identity(cluster: str, port: int, version: int = PROTOCOL_VERSION) -> Callable[[], PeerInfo]:
    return lambda: PeerInfo(
        cluster=cluster,
        role="coordinator",
        node_id=NodeId("node-static"),
        protocol_version=version,
        address=f"0.0.0.0:{port}",  # what it believes; the table keys it by where it was reached
        models=("m",),
    )


async def _until(discovery: Discovery, condition: Callable[[], bool]) -> None:
    for _ in range(40):  # bounded: 40 changes or 20 s
        if condition():
            return
        await discovery.wait_for_change(0.5)
    raise AssertionError(f"peers {discovery.peers()}, refused {discovery.refused()}")


def test_static_peers_identify_refuse_and_drop() -> None:
    cluster = f"static-{secrets.token_hex(3)}"

    async def scenario() -> None:
        good = GrpcServer("127.0.0.1", 0, [PEER_SERVICE_NAME])
        add_peer_service(good.server, _identity(cluster, good.port))
        skewed = GrpcServer("127.0.0.1", 0, [PEER_SERVICE_NAME])
        add_peer_service(skewed.server, _identity(cluster, skewed.port, PROTOCOL_VERSION + 1))
        await good.start()
        await skewed.start()
        good_address, skewed_address = f"127.0.0.1:{good.port}", f"127.0.0.1:{skewed.port}"
        options = DiscoveryOptions(cluster=cluster, static_peers=(good_address, skewed_address), mdns=False)
        discovery = Discovery(options, own=None)
        await discovery.start()
        try:
            await _until(discovery, lambda: len(discovery.peers()) == 1 and len(discovery.refused()) == 1)
            (peer,) = discovery.peers("coordinator")
            assert peer.address == good_address
            assert peer.models == ("m",)
            assert discovery.refused()[0].address == skewed_address
            assert "incompatible" in discovery.refused()[0].reason
            await good.stop(0)
            await _until(discovery, lambda: discovery.peers() == ())
        finally:
            await discovery.stop()
            await skewed.stop(0)

    asyncio.run(scenario())


def test_discovery_flags() -> None:
    parser = argparse.ArgumentParser()
    add_discovery_arguments(parser)
    options = discovery_options(
        parser.parse_args(
            ["--cluster", "lab", "--interface", "10.0.0.1", "--peer", "10.0.0.2:52416", "--peer", "h:1", "--no-mdns"]
        )
    )
    assert options == DiscoveryOptions(
        cluster="lab", interfaces=("10.0.0.1",), static_peers=("10.0.0.2:52416", "h:1"), mdns=False
    )
    defaults = discovery_options(parser.parse_args([]))
    assert defaults.mdns
    assert defaults.static_peers == ()
    with pytest.raises(SystemExit):
        parser.parse_args(["--peer", "no-port"])
