"""`PeerSource`: the current peers of this service's cluster by role, however they were found.

    discovery = Discovery(options, own=PeerInfo(...))   # own=None to browse without announcing
    await discovery.start()
    discovery.peers("coordinator")                      # trusted peers of that role, right now
    await discovery.wait_for_change(5.0)                # returns on any change, or after 5 s
    await discovery.update_self(new_own)                # re-announce changed properties
    await discovery.stop()                              # goodbye

mDNS (`MdnsPeers`) and the static `--peer` list (`StaticPeers`) feed one `PeerTable`; either or both
may be active. Services depend only on the `PeerSource` protocol, so tests can hand them a fixed set.
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from discovery.mdns import MdnsPeers
from discovery.peer import DEFAULT_CLUSTER, PeerInfo, RefusedPeer, Role
from discovery.peer_table import PeerTable
from discovery.static_peers import StaticPeers


class PeerSource(Protocol):
    def peers(self, role: Role | None = None) -> tuple[PeerInfo, ...]: ...

    def refused(self) -> tuple[RefusedPeer, ...]: ...

    async def wait_for_change(self, timeout_seconds: float) -> None: ...


@dataclass(frozen=True)
class DiscoveryOptions:
    cluster: str = DEFAULT_CLUSTER
    interfaces: tuple[str, ...] = ()
    """Addresses mDNS may use; empty means every interface of the host."""
    static_peers: tuple[str, ...] = ()
    mdns: bool = True


class Discovery:
    """A `PeerSource` that announces this service and finds the others."""

    def __init__(self, options: DiscoveryOptions, own: PeerInfo | None) -> None:
        self.options = options
        self._table = PeerTable(options.cluster, own.address if own is not None else None)
        self._mdns = MdnsPeers(self._table, options.interfaces, own) if options.mdns else None
        self._static = StaticPeers(self._table, options.static_peers) if options.static_peers else None
        self._static_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._mdns is not None:
            await self._mdns.start()
        if self._static is not None:
            self._static_task = asyncio.create_task(self._static.run())

    async def stop(self) -> None:
        if self._static_task is not None:
            self._static_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._static_task
        if self._mdns is not None:
            await self._mdns.stop()

    async def update_self(self, own: PeerInfo) -> None:
        if self._mdns is not None:
            await self._mdns.update(own)

    def peers(self, role: Role | None = None) -> tuple[PeerInfo, ...]:
        return self._table.peers(role)

    def refused(self) -> tuple[RefusedPeer, ...]:
        return self._table.refused()

    async def wait_for_change(self, timeout_seconds: float) -> None:
        await self._table.wait_for_change(timeout_seconds)


def first_address(source: PeerSource, role: Role) -> Callable[[], str | None]:
    """A function giving the address of the first trusted peer of `role` now (lowest address), or None."""

    def current() -> str | None:
        peers = source.peers(role)
        return peers[0].address if peers else None

    return current
