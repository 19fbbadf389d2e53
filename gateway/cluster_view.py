"""The gateway's view of the cluster: which models are served and where their ready instances are.

Follows the coordinator by polling its state (the event stream replaces this when replication lands).
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.grpc_server import insecure_channel
from services.ids import InstanceId, ModelId
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

logger = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.5


@dataclass(frozen=True)
class ReadyInstance:
    instance_id: InstanceId
    first_shard_address: str


class ClusterView:
    def __init__(self, coordinator_address: str) -> None:
        self._coordinator_address = coordinator_address
        self._state = coordinator_pb2.ClusterState()
        self._task: asyncio.Task[None] | None = None
        self._reachable = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        async with insecure_channel(self._coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            while True:
                try:
                    self._state = await stub.GetState(coordinator_pb2.GetStateRequest(), timeout=5)
                    if not self._reachable:
                        logger.info("following coordinator %s", self._coordinator_address)
                    self._reachable = True
                except grpc.aio.AioRpcError as error:
                    if self._reachable:
                        logger.warning("coordinator %s unreachable: %s", self._coordinator_address, error.details())
                    self._reachable = False
                await asyncio.sleep(POLL_INTERVAL_SECONDS)

    def served_models(self) -> Sequence[ModelId]:
        return [ModelId(model_id) for model_id in self._state.model_ids]

    def is_ready(self, model_id: ModelId) -> bool:
        return self.ready_instance(model_id) is not None

    def ready_instance(self, model_id: ModelId) -> ReadyInstance | None:
        for instance in self._state.instances:
            if instance.model_id == model_id and instance.status == "ready" and instance.stages:
                return ReadyInstance(InstanceId(instance.instance_id), instance.stages[0].address)
        return None
