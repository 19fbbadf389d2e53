"""The outbound link of a shard: one long-lived bidirectional stream to the next shard in the ring.

Messages are queued and sent in order. If the stream breaks, `on_broken` is told (the worker then
fails the requests it holds, so nothing waits forever), and the next message opens a fresh stream.

The queue is bounded (messages and bytes): the stage worker waits for room (`wait_for_room`, from
its own thread) before it emits a message, so a next shard that reads slowly slows this one down
instead of growing its memory. A next shard that stops reading altogether (no room within the
stall limit) breaks the link: its queued messages are dropped and the requests fail.

Messages come encoded (`encode_ring_message`, on the worker thread): the event loop, which every
message must cross, only queues them.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from services.kernel.ids import RequestId
from services.platform.grpc_server import cluster_channel
from shard_server.ring_messages import RingMessage
from shard_server.wire import ring_message_to_pb
from strata_wire import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 256
MAX_QUEUED_BYTES = 256 * 1024 * 1024
STALL_SECONDS = 30.0
"""How long the worker waits for room before the next shard counts as no longer reading."""


@dataclass(frozen=True)
class EncodedRingMessage:
    message: shard_pb2.RingMessage
    size: int
    kind: str
    """The domain message's type, for logs."""


@dataclass
class RingTraffic:
    """Ring messages and their bytes (protobuf size) sent to the next shard and received from the previous
    one, since start. Changed on the event loop only; a scrape reads the ints from another thread."""

    sent_messages: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    received_bytes: int = 0

    def sent(self, size: int) -> None:
        self.sent_messages += 1
        self.sent_bytes += size

    def received(self, size: int) -> None:
        self.received_messages += 1
        self.received_bytes += size


def encode_ring_message(message: RingMessage) -> EncodedRingMessage:
    """Thread-safe; call it where the message is made, so the event loop does not."""
    encoded = ring_message_to_pb(message)
    return EncodedRingMessage(encoded, encoded.ByteSize(), type(message).__name__)


class RingLink:
    def __init__(
        self,
        address: str,
        on_refused: Callable[[RequestId, str], None],
        on_broken: Callable[[str], None],
        max_messages: int = MAX_QUEUED_MESSAGES,
        max_bytes: int = MAX_QUEUED_BYTES,
        traffic: RingTraffic | None = None,
    ) -> None:
        self.address = address
        self._traffic = traffic if traffic is not None else RingTraffic()
        self._on_refused = on_refused
        self._on_broken = on_broken
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._channel = cluster_channel(address)
        self._stub = shard_pb2_grpc.ShardStub(self._channel)
        self._outbox: asyncio.Queue[tuple[shard_pb2.RingMessage, int] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._room = threading.Condition()
        """Guards the counters below: changed on the event loop, waited on by the worker thread."""
        self._queued_messages = 0
        self._queued_bytes = 0
        self._closed = False

    def wait_for_room(self, timeout_seconds: float = STALL_SECONDS) -> bool:
        """Blocks (worker thread only, never the event loop) until the queue has room; False on timeout."""
        with self._room:
            return self._room.wait_for(lambda: self._closed or not self._full(), timeout_seconds)

    def _full(self) -> bool:
        return self._queued_messages >= self._max_messages or self._queued_bytes >= self._max_bytes

    def send(self, encoded: EncodedRingMessage) -> None:
        with self._room:
            full = self._full()
        if full:
            self._break(
                f"the next shard {self.address} stopped reading: {self._queued_messages} messages "
                f"({self._queued_bytes} bytes) waited to be sent"
            )
        if self._outbox is None or self._task is None or self._task.done():
            self._outbox = asyncio.Queue()
            self._task = asyncio.create_task(self._run(self._outbox))
        with self._room:
            self._queued_messages += 1
            self._queued_bytes += encoded.size
        self._outbox.put_nowait((encoded.message, encoded.size))

    def _taken(self, size: int) -> None:
        with self._room:
            self._queued_messages -= 1
            self._queued_bytes -= size
            self._room.notify_all()

    def _break(self, message: str) -> None:
        """Drops the stream and what waits in it; the worker fails the requests it holds."""
        logger.warning("ring link to %s: %s", self.address, message)
        if self._task is not None:
            self._task.cancel()
        self._drop(self._outbox)
        self._outbox = None
        self._task = None
        self._on_broken(message)

    def _drop(self, outbox: asyncio.Queue[tuple[shard_pb2.RingMessage, int] | None] | None) -> None:
        while outbox is not None and not outbox.empty():
            item = outbox.get_nowait()
            if item is not None:
                self._taken(item[1])

    async def _run(self, outbox: asyncio.Queue[tuple[shard_pb2.RingMessage, int] | None]) -> None:
        async def outgoing() -> AsyncIterator[shard_pb2.RingMessage]:
            while (item := await outbox.get()) is not None:
                self._taken(item[1])
                self._traffic.sent(item[1])
                yield item[0]

        try:
            call = self._stub.Ring(outgoing())
            async for reply in call:
                logger.warning("next shard refused request %s: %s", reply.request_id, reply.error)
                self._on_refused(RequestId(reply.request_id), f"next shard refused it: {reply.error}")
        except grpc.aio.AioRpcError as error:
            logger.warning("ring link to %s broke: %s", self.address, error.details())
            self._on_broken(f"the link to shard {self.address} broke: {error.details()}")
        finally:
            self._drop(outbox)
            if self._outbox is outbox:
                self._outbox = None

    async def close(self) -> None:
        with self._room:
            self._closed = True
            self._room.notify_all()
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()
