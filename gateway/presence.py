"""A gateway's part in discovery: it announces itself (role gateway, its HTTP address), follows the
coordinator discovery finds, and fetches the tokenizer files (config, tokenizer, chat template: no
weights) of every served model its host's store lacks, from the coordinator or a peer holding them.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence

from discovery.peer import PROTOCOL_VERSION, PeerInfo
from discovery.peer_source import Discovery, DiscoveryOptions, first_address
from services.kernel.ids import ModelId, NodeId
from services.models.model_fetch import FetchError, ModelFetcher
from services.models.model_store import ModelStore

logger = logging.getLogger(__name__)

FETCH_CHECK_SECONDS = 1.0


class GatewayPresence:
    def __init__(self, options: DiscoveryOptions, node_id: NodeId, http_address: str, store: ModelStore) -> None:
        self._store = store
        self._fetcher = ModelFetcher(store)
        own = PeerInfo(
            cluster=options.cluster,
            role="gateway",
            node_id=node_id,
            protocol_version=PROTOCOL_VERSION,
            address=http_address,
        )
        self.discovery = Discovery(options, own=own)
        self._failures: dict[ModelId, str] = {}

    async def start(self) -> None:
        await self.discovery.start()

    async def stop(self) -> None:
        await self.discovery.stop()

    def coordinator_address(self, explicit: str | None) -> Callable[[], str | None]:
        if explicit:
            return lambda: explicit
        return first_address(self.discovery, "coordinator")

    async def keep_tokenizers(
        self, served_models: Callable[[], Sequence[ModelId]], coordinator: Callable[[], str | None]
    ) -> None:
        """Until cancelled: fetches the metadata of served models absent from the store."""
        while True:
            for model_id in served_models():
                if self._store.has_model(model_id):
                    continue
                holders = [peer.address for peer in self.discovery.peers() if model_id in peer.models]
                sources = list(dict.fromkeys([address for address in (coordinator(),) if address] + holders))
                try:
                    await self._fetcher.ensure_metadata(model_id, sources)
                    logger.info("fetched the tokenizer of %s", model_id)
                except (FetchError, ValueError) as error:
                    if self._failures.get(model_id) != str(error):
                        logger.warning("cannot fetch the tokenizer of %s yet: %s", model_id, error)
                        self._failures[model_id] = str(error)
            await asyncio.sleep(FETCH_CHECK_SECONDS)
