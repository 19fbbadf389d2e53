"""Follow the cluster from outside the coordinator: a local copy of ClusterState kept current by the
WatchEvents stream of committed events (gateways, shards, dashboards).

It starts from a snapshot when the log it needs was compacted, applies each event with the same pure
`apply` as the replicas, and on any break reconnects (to the next replica address in turn) with
exponential backoff from the first event it lacks, so it never misses or repeats one.

`subscribe()` hands each change to a subscriber's bounded queue (dashboards stream them on): a
`FollowedChange` with the new state and the committed record (None for a snapshot). A subscriber that
falls 1024 changes behind loses its queued changes for one fresh snapshot change, never silently.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

import grpc

from services.cluster.apply import apply
from services.cluster.events import IndexedEvent
from services.cluster.state import ClusterState
from services.platform.grpc_server import cluster_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

logger = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
SUBSCRIBER_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class FollowedChange:
    """The state after a change, and the committed record that made it (None: a snapshot)."""

    state: ClusterState
    record: IndexedEvent | None


class EventFollower:
    def __init__(self, addresses: Sequence[str] | Callable[[], Sequence[str]]) -> None:
        """`addresses`: coordinator replicas, or a function giving the current ones (from discovery)."""
        self._addresses = addresses if callable(addresses) else lambda: addresses
        self._state = ClusterState()
        self._changed = asyncio.Event()
        self._subscribers: list[asyncio.Queue[FollowedChange]] = []
        self.reconnects = 0

    @property
    def state(self) -> ClusterState:
        return self._state

    async def wait_for_change(self, timeout_seconds: float) -> None:
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout_seconds)
        except TimeoutError:
            return

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncGenerator[asyncio.Queue[FollowedChange]]:
        """A queue of every change from now on, until the block ends."""
        queue: asyncio.Queue[FollowedChange] = asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
        self._subscribers.append(queue)
        try:
            yield queue
        finally:
            self._subscribers.remove(queue)

    async def run(self) -> None:
        """Follows until cancelled."""
        backoff = FIRST_BACKOFF_SECONDS
        attempt = 0
        while True:
            addresses = self._addresses()
            if not addresses:  # none discovered yet
                await asyncio.sleep(backoff)
                continue
            address = addresses[attempt % len(addresses)]
            attempt += 1
            received = await self._follow(address)
            backoff = FIRST_BACKOFF_SECONDS if received else min(backoff * 2, MAX_BACKOFF_SECONDS)
            self.reconnects += 1
            await asyncio.sleep(backoff)

    async def _follow(self, address: str) -> bool:
        """One stream from `address`; returns whether it delivered anything before it broke."""
        received = False
        request = coordinator_pb2.WatchEventsRequest(from_index=self._state.last_index + 1)
        async with cluster_channel(address) as channel:
            try:
                async for watched in coordinator_pb2_grpc.CoordinatorStub(channel).WatchEvents(request):
                    received = True
                    if not self.take(watched):
                        return received  # a gap: start again from what we lack
            except grpc.aio.AioRpcError as error:
                logger.info("event stream from %s broke: %s", address, error.details())
        return received

    def take(self, watched: coordinator_pb2.WatchedEvent) -> bool:
        """Applies one streamed item; False on a gap (the stream must restart from what is lacking)."""
        if watched.state_json:
            if watched.index > self._state.last_index:
                self._state = ClusterState.model_validate_json(watched.state_json)
                self._notify(None)
            return True
        record = IndexedEvent.model_validate_json(watched.record_json)
        if record.index <= self._state.last_index:
            return True
        if record.index != self._state.last_index + 1:
            return False
        self._state = apply(self._state, record)
        self._notify(record)
        return True

    def _notify(self, record: IndexedEvent | None) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        change = FollowedChange(self._state, record)
        for queue in self._subscribers:
            if queue.full():
                # A slow subscriber: what it missed is folded into one snapshot of the state now.
                while not queue.empty():
                    queue.get_nowait()
                change_for_queue = FollowedChange(self._state, None)
            else:
                change_for_queue = change
            queue.put_nowait(change_for_queue)
