"""Peers from a static `--peer host:port` list, for networks without multicast.

Each listed address is asked `Peer.Identify` every few seconds; a peer that answers is offered to the
table like an mDNS announcement, one that stops answering for `MISSES_BEFORE_DROP` polls is removed
(as an expired mDNS record would be).
"""

import asyncio
import logging
from collections.abc import Sequence

import grpc

from discovery.identity_service import peer_from_pb
from discovery.peer_table import PeerTable
from services.platform.grpc_server import cluster_channel
from strata_wire import discovery_pb2, discovery_pb2_grpc

logger = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 1.0
IDENTIFY_TIMEOUT_SECONDS = 2.0
MISSES_BEFORE_DROP = 3


class StaticPeers:
    def __init__(self, table: PeerTable, addresses: Sequence[str]) -> None:
        self._table = table
        self._addresses = tuple(dict.fromkeys(addresses))
        self._misses = dict.fromkeys(self._addresses, 0)

    async def run(self) -> None:
        """Polls every listed peer until cancelled."""
        channels = {address: cluster_channel(address) for address in self._addresses}
        try:
            while True:
                await asyncio.gather(*(self._poll(address, channel) for address, channel in channels.items()))
                await asyncio.sleep(POLL_INTERVAL_SECONDS)
        finally:
            for channel in channels.values():
                await channel.close()

    async def _poll(self, address: str, channel: grpc.aio.Channel) -> None:
        try:
            identity = await discovery_pb2_grpc.PeerStub(channel).Identify(
                discovery_pb2.IdentifyRequest(), timeout=IDENTIFY_TIMEOUT_SECONDS
            )
            peer = peer_from_pb(identity, address)
        except (grpc.aio.AioRpcError, ValueError) as error:
            self._misses[address] += 1
            if self._misses[address] == MISSES_BEFORE_DROP:
                logger.info("static peer %s stopped answering: %s", address, error)
                self._table.remove(address)
            return
        self._misses[address] = 0
        self._table.offer(peer)
