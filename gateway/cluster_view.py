"""The gateway's view of the cluster: which models are served and where their ready instances are.

Follows the coordinator's committed events (WatchEvents), keeping a local copy of the cluster state;
any replica can serve the stream, and it reconnects with backoff from the first event it lacks.
`subscribe()` passes each change on (the dashboard's event stream); `fetch_status()` asks the
coordinator for its `GetState` reply (`GET /v1/cluster`), raising `ClusterUnavailableError` when it
cannot answer.
"""

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import grpc

from services.cluster.event_follower import EventFollower, FollowedChange
from services.cluster.state import ClusterState
from services.kernel.ids import InstanceId, ModelId
from services.platform.grpc_server import cluster_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

CHANGE_POLL_SECONDS = 1.0
"""Longest wait between two looks at the state (a change wakes the waiters at once)."""

STATE_CALL_TIMEOUT_SECONDS = 5.0


class ClusterUnavailableError(Exception):
    """No coordinator answered a question about the cluster (none known, or it did not reply)."""


@dataclass(frozen=True)
class ReadyInstance:
    instance_id: InstanceId
    first_shard_address: str


class ClusterView:
    def __init__(self, coordinator_address: str | Callable[[], str | None]) -> None:
        """`coordinator_address`: an address, or a function giving the current one (from discovery)."""
        self._coordinator_address = (
            coordinator_address if callable(coordinator_address) else lambda: coordinator_address
        )
        self._follower = EventFollower(self._current_addresses)
        self._task: asyncio.Task[None] | None = None

    def _current_addresses(self) -> Sequence[str]:
        address = self._coordinator_address()
        return [] if address is None else [address]

    def start(self) -> None:
        self._task = asyncio.create_task(self._follower.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def coordinator_address(self) -> str | None:
        return self._coordinator_address()

    @property
    def state(self) -> ClusterState:
        """The local copy of the committed cluster state."""
        return self._follower.state

    def subscribe(self) -> AbstractAsyncContextManager[asyncio.Queue[FollowedChange]]:
        """Every change of the state from now on, while the block runs (see `EventFollower.subscribe`)."""
        return self._follower.subscribe()

    async def fetch_status(self) -> coordinator_pb2.ClusterState:
        """The coordinator's GetState reply: what `strata status` shows."""
        address = self._coordinator_address()
        if address is None:
            raise ClusterUnavailableError("No coordinator is known yet (discovery has found none).")
        async with cluster_channel(address) as channel:
            try:
                return await coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
                    coordinator_pb2.GetStateRequest(), timeout=STATE_CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                raise ClusterUnavailableError(
                    f"The coordinator at {address} did not answer: {error.code().name}."
                ) from error

    def served_models(self) -> Sequence[ModelId]:
        return sorted(self._follower.state.models)

    def is_served(self, model_id: ModelId) -> bool:
        return model_id in self._follower.state.models

    def is_ready(self, model_id: ModelId) -> bool:
        return self.ready_instance(model_id) is not None

    def ready_instance(
        self, model_id: ModelId, avoiding: InstanceId | None = None, load: Mapping[InstanceId, int] | None = None
    ) -> ReadyInstance | None:
        """The ready instance of the model with the least `load` (requests this gateway runs on it),
        other than `avoiding` (one that just failed a request); the first placed among equals."""
        state = self._follower.state
        candidates: list[ReadyInstance] = []
        for instance in state.instances.values():
            if instance.instance_id == avoiding:
                continue
            if instance.model_id == model_id and instance.status == "ready" and instance.stages:
                first = state.shards.get(instance.stages[0].shard_id)
                if first is not None:
                    candidates.append(ReadyInstance(InstanceId(instance.instance_id), first.address))
        counts = load or {}
        return min(candidates, key=lambda candidate: counts.get(candidate.instance_id, 0), default=None)

    def is_serving(self, instance_id: InstanceId) -> bool:
        """Whether the instance is still placed and ready (false once removed, failed or re-placed)."""
        instance = self._follower.state.instances.get(instance_id)
        return instance is not None and instance.status == "ready"

    async def wait_for_change(self, timeout_seconds: float) -> None:
        """Returns after the next state change, or after `timeout_seconds`."""
        await self._follower.wait_for_change(timeout_seconds)

    async def wait_until_not_serving(self, instance_id: InstanceId) -> None:
        """Returns once the coordinator has removed the instance or marked it failed."""
        while self.is_serving(instance_id):
            await self._follower.wait_for_change(CHANGE_POLL_SECONDS)
