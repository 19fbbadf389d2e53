"""A shard server's part in discovery: what it announces, which coordinators it registers with, where it
fetches the model files its layers need, and its share of the host's memory.

Memory is counted per host: the shard servers of one node (same $STRATA_HOME node id) split what the
host offers equally, so two shards on one machine never both promise all of its memory.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence

import psutil

from discovery.peer import PROTOCOL_VERSION, PeerInfo, host_share
from discovery.peer_source import Discovery, DiscoveryOptions
from services.kernel.ids import ModelId, NodeId
from services.models.model_fetch import FetchedBytes, FetchError, ModelFetcher
from services.models.model_store import ModelStore
from services.platform.compute_device import ComputeDevice

logger = logging.getLogger(__name__)

StageFetcher = Callable[[ModelId, int, int], Awaitable[str | None]]
"""Makes the files of layers [start, end) of a model present; returns why it could not, or None."""


class ShardPresence:
    def __init__(
        self,
        options: DiscoveryOptions,
        node_id: NodeId,
        address: str,
        store: ModelStore,
        host_memory: int,
        memory_limit: int | None,
        device: ComputeDevice,
        work_per_second: float,
    ) -> None:
        """`host_memory`: what the host offers to all its shards; `memory_limit`: this shard's own cap."""
        self._options = options
        self._node_id = node_id
        self._address = address
        self._store = store
        self._host_memory = host_memory
        self.device = device
        self.work_per_second = work_per_second
        self._memory_limit = memory_limit
        self._fetcher = ModelFetcher(store)
        self.discovery = Discovery(options, own=self.identity())

    async def start(self) -> None:
        await self.discovery.start()

    async def stop(self) -> None:
        await self.discovery.stop()

    @property
    def fetched(self) -> FetchedBytes:
        """Model file bytes fetched for this shard's stages since it started (peers, Hub)."""
        return self._fetcher.fetched

    def memory_share(self) -> int:
        """This shard's part of what the host offers: an equal split among the host's shard servers.

        Every shard of the host takes the smallest host figure any of them announced, so they agree.
        """
        share = host_share(self.identity(), self.discovery.peers("shard"))
        return share if self._memory_limit is None else min(share, self._memory_limit)

    def identity(self) -> PeerInfo:
        return PeerInfo(
            cluster=self._options.cluster,
            role="shard",
            node_id=self._node_id,
            protocol_version=PROTOCOL_VERSION,
            address=self._address,
            total_memory_bytes=psutil.virtual_memory().total,
            available_memory_bytes=self._host_memory,
            device=self.device.kind,
            models=tuple(self._store.list_models()),
            work_per_second=self.work_per_second,
        )

    def coordinators(self, explicit: str | None) -> Callable[[], Sequence[str]]:
        """The coordinators to register with: the one given, or every one discovery trusts now."""
        if explicit:
            return lambda: (explicit,)
        return lambda: tuple(peer.address for peer in self.discovery.peers("coordinator"))

    def fetch_stage_hook(self, coordinators: Callable[[], Sequence[str]]) -> StageFetcher:
        """Fetches missing files from the coordinators (whose stores hold the models they serve), then from
        any peer announcing the model."""

        async def fetch_stage(model_id: ModelId, start_layer: int, end_layer: int) -> str | None:
            holders = [peer.address for peer in self.discovery.peers() if model_id in peer.models]
            sources = list(dict.fromkeys([*coordinators(), *holders]))
            had_model = self._store.has_model(model_id)
            try:
                await self._fetcher.ensure_stage(model_id, start_layer, end_layer, sources)
            except (FetchError, ValueError) as error:  # ValueError: an invalid model id
                return str(error)
            if not had_model:
                await self.discovery.update_self(self.identity())
            return None

        return fetch_stage
