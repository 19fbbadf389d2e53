"""A coordinator replica's part in discovery: it announces itself (with the models its store holds, which
shards and gateways may fetch from it), feeds the replica addresses it finds to the Raft membership
(`PeerSet.update`), and offers newly discovered shard servers for registration.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable

from discovery.peer import PROTOCOL_VERSION, PeerInfo, host_share
from discovery.peer_source import Discovery, DiscoveryOptions
from services.kernel.ids import NodeId
from services.models.model_store import ModelStore

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0


class CoordinatorPresence:
    def __init__(self, options: DiscoveryOptions, node_id: NodeId, address: str, store: ModelStore) -> None:
        self._options = options
        self._node_id = node_id
        self._address = address
        self._store = store
        self.discovery = Discovery(options, own=self.identity())

    def identity(self) -> PeerInfo:
        return PeerInfo(
            cluster=self._options.cluster,
            role="coordinator",
            node_id=self._node_id,
            protocol_version=PROTOCOL_VERSION,
            address=self._address,
            models=tuple(self._store.list_models()),
        )

    async def start(self) -> None:
        await self.discovery.start()

    async def stop(self) -> None:
        await self.discovery.stop()

    def replica_addresses(self) -> tuple[str, ...]:
        """Other coordinator replicas of this cluster found now (mDNS or static peers), by address."""
        return tuple(peer.address for peer in self.discovery.peers("coordinator"))

    async def follow(
        self,
        update_replicas: Callable[[Iterable[str]], None],
        offer_shard: Callable[[PeerInfo], Awaitable[None]],
    ) -> None:
        """Until cancelled: hands the replica set to `update_replicas` and each newly seen shard server to
        `offer_shard` whenever discovery changes (and every few seconds)."""
        offered: set[PeerInfo] = set()
        while True:
            update_replicas(self.replica_addresses())
            shards = set(self.discovery.peers("shard"))
            for shard in shards - offered:
                await offer_shard(shard.model_copy(update={"available_memory_bytes": host_share(shard, shards)}))
            offered = shards
            await self.discovery.wait_for_change(RECHECK_SECONDS)
