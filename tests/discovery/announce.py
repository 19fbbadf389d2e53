"""Announce a made-up strata service over mDNS until SIGTERM, for tests of what peers refuse.

`python -m tests.discovery.announce CLUSTER ROLE PORT VERSION INTERFACE`
"""

import asyncio
import signal
import sys

from discovery.peer import PeerInfo, parse_role
from discovery.peer_source import Discovery, DiscoveryOptions
from services.kernel.ids import NodeId


async def announce(cluster: str, role: str, port: int, version: int, interface: str) -> None:
    own = PeerInfo(
        cluster=cluster,
        role=parse_role(role),
        node_id=NodeId(f"node-announce-{port}"),
        protocol_version=version,
        address=f"{interface}:{port}",
        total_memory_bytes=10**12,
        available_memory_bytes=10**12,
        device="cpu",
    )
    discovery = Discovery(DiscoveryOptions(cluster=cluster, interfaces=(interface,)), own=own)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await discovery.start()
    print("announcing", flush=True)
    await stopping.wait()
    await discovery.stop()


if __name__ == "__main__":
    cluster_name, role_name, port_text, version_text, interface_address = sys.argv[1:6]
    asyncio.run(announce(cluster_name, role_name, int(port_text), int(version_text), interface_address))
