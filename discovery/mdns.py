"""mDNS discovery with python-zeroconf's asyncio API: announce this service, browse for the others.

Everything runs on the service's event loop. A peer that says goodbye is removed at once. One that dies
without a goodbye would linger as long as its PTR record (zeroconf clamps PTR TTLs to at least 1125 s),
so every known peer is resolved again each `RECORD_TTL_SECONDS`: its SRV/TXT/A records carry that short
TTL, so a dead peer stops resolving and is dropped after `MISSES_BEFORE_DROP` failed rounds (about
half a minute); if it answers again later it is offered again. `interfaces` limits mDNS to the given
addresses; tests pass loopback or namespace addresses only.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

from zeroconf import IPVersion, ServiceListener, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from discovery.peer import SERVICE_TYPE, PeerInfo, split_address
from discovery.peer_table import PeerTable
from discovery.txt_record import TxtRecordError, from_properties, to_properties

logger = logging.getLogger(__name__)

RECORD_TTL_SECONDS = 15
RESOLVE_TIMEOUT_MILLISECONDS = 3000
MISSES_BEFORE_DROP = 2
WILDCARD_HOSTS = ("0.0.0.0", "", "::")


def service_name(peer: PeerInfo) -> str:
    return f"{peer.role}-{peer.node_id}-{peer.port}.{SERVICE_TYPE}"


class _Listener(ServiceListener):
    """Turns browser callbacks (called on the event loop) into resolve tasks and removals."""

    def __init__(self, owner: "MdnsPeers") -> None:
        self._owner = owner

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._owner.schedule_resolve(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._owner.schedule_resolve(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._owner.forget(name)


class MdnsPeers:
    def __init__(self, table: PeerTable, interfaces: Sequence[str], own: PeerInfo | None) -> None:
        self._table = table
        self._interfaces = list(interfaces)
        self._own = own
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._announced: AsyncServiceInfo | None = None
        self._addresses_by_name: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._misses: dict[str, int] = {}
        """Names the browser reported and has not removed, with failed resolves in a row."""
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._interfaces:
            self._zeroconf = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        else:
            self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        if self._own is not None:
            self._announced = self._service_info(self._own)
            await (await self._zeroconf.async_register_service(self._announced))
            logger.info("announcing %s over mDNS as %s", self._own.role, self._announced.name)
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, SERVICE_TYPE, listener=_Listener(self))
        self._refreshing = asyncio.create_task(self._refresh())

    async def update(self, own: PeerInfo) -> None:
        """Re-announces with new properties (models fetched, memory changed)."""
        self._own = own
        if self._zeroconf is None or self._announced is None:
            return
        self._announced = self._service_info(own)
        await (await self._zeroconf.async_update_service(self._announced))

    async def stop(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for task in self._resolving.values():
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            if self._announced is not None:
                with contextlib.suppress(Exception):  # goodbyes are best effort while stopping
                    await (await self._zeroconf.async_unregister_service(self._announced))
            await self._zeroconf.async_close()

    def _service_info(self, own: PeerInfo) -> AsyncServiceInfo:
        host, port = split_address(own.address)
        addresses = self._interfaces if host in WILDCARD_HOSTS else [host]
        if not addresses:
            addresses = [socket.gethostbyname(socket.gethostname())]
        return AsyncServiceInfo(
            SERVICE_TYPE,
            service_name(own),
            port=port,
            properties=to_properties(own),
            server=f"{own.node_id}-{port}.local.",
            host_ttl=RECORD_TTL_SECONDS,
            other_ttl=RECORD_TTL_SECONDS,
            parsed_addresses=addresses,
        )

    async def _refresh(self) -> None:
        """Until cancelled: resolves every known peer again, so silent deaths are noticed."""
        while True:
            await asyncio.sleep(RECORD_TTL_SECONDS)
            for name in list(self._misses):
                if name not in self._resolving or self._resolving[name].done():
                    self.schedule_resolve(name)

    def schedule_resolve(self, name: str) -> None:
        self._misses.setdefault(name, 0)
        previous = self._resolving.get(name)
        if previous is not None and not previous.done():
            previous.cancel()
        self._resolving[name] = asyncio.get_running_loop().create_task(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        if self._zeroconf is None or (self._announced is not None and name == self._announced.name):
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MILLISECONDS):
            logger.debug("could not resolve %s", name)
            self._missed(name)
            return
        if name in self._misses:
            self._misses[name] = 0
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            return
        address = f"{addresses[0]}:{info.port}"
        try:
            peer = from_properties(info.properties, address)
        except TxtRecordError as error:
            logger.debug("ignoring %s: %s", name, error)
            return
        previous = self._addresses_by_name.get(name)
        if previous is not None and previous != address:
            self._table.remove(previous)
        self._addresses_by_name[name] = address
        self._table.offer(peer)

    def _missed(self, name: str) -> None:
        if name not in self._misses:
            return
        self._misses[name] += 1
        if self._misses[name] >= MISSES_BEFORE_DROP:
            address = self._addresses_by_name.pop(name, None)
            if address is not None:
                logger.info("%s stopped answering mDNS", name)
                self._table.remove(address)

    def forget(self, name: str) -> None:
        self._misses.pop(name, None)
        task = self._resolving.pop(name, None)
        if task is not None:
            task.cancel()
        address = self._addresses_by_name.pop(name, None)
        if address is not None:
            self._table.remove(address)
