"""The outbound link of a shard: one long-lived bidirectional stream to the next shard in the ring.

Messages are queued and sent in order. If the stream breaks, `on_broken` is told (the worker then
fails the requests it holds, so nothing waits forever), and the next message opens a fresh stream.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from services.grpc_server import cluster_channel
from services.ids import RequestId
from shard_server.ring_messages import RingMessage
from shard_server.wire import ring_message_to_pb
from strata_wire import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)


class RingLink:
    def __init__(
        self,
        address: str,
        on_refused: Callable[[RequestId, str], None],
        on_broken: Callable[[str], None],
    ) -> None:
        self.address = address
        self._on_refused = on_refused
        self._on_broken = on_broken
        self._channel = cluster_channel(address)
        self._stub = shard_pb2_grpc.ShardStub(self._channel)
        self._outbox: asyncio.Queue[shard_pb2.RingMessage | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def send(self, message: RingMessage) -> None:
        if self._outbox is None or self._task is None or self._task.done():
            self._outbox = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._outbox))
        self._outbox.put_nowait(ring_message_to_pb(message))

    async def _run(self, outbox: asyncio.Queue[shard_pb2.RingMessage | None]) -> None:
        async def outgoing() -> AsyncIterator[shard_pb2.RingMessage]:
            while (message := await outbox.get()) is not None:
                yield message

        try:
            call = self._stub.Ring(outgoing())
            async for reply in call:
                logger.warning("next shard refused request %s: %s", reply.request_id, reply.error)
                self._on_refused(RequestId(reply.request_id), f"next shard refused it: {reply.error}")
        except grpc.aio.AioRpcError as error:
            logger.warning("ring link to %s broke: %s", self.address, error.details())
            self._on_broken(f"the link to shard {self.address} broke: {error.details()}")
        finally:
            if self._outbox is outbox:
                self._outbox = None

    async def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()
