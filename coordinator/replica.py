"""A coordinator replica: appends events, applies them, and carries out the planner's actions.

Today a single replica is the whole cluster (a majority of one); the log is kept in memory. The
replicated, elected log plugs in behind `append` without changing the rest.
"""

import asyncio
import logging

import grpc

from coordinator.apply import apply
from coordinator.events import (
    Event,
    IndexedEvent,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ShardRegistered,
    StageFailed,
    StageLoaded,
)
from coordinator.planner import CannotPlace, PlaceInstance, RemoveInstance, plan
from coordinator.state import ClusterState, ModelInstance, ModelSpec, ShardServer, StageAssignment
from strata_wire import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

ASSIGN_TIMEOUT_SECONDS = 600.0
RETRY_DELAY_SECONDS = 2.0


class CoordinatorReplica:
    def __init__(self, minimum_shards: int, prefill_step_size: int) -> None:
        self._minimum_shards = minimum_shards
        self._prefill_step_size = prefill_step_size
        self._state = ClusterState()
        self._log: list[IndexedEvent] = []
        self._changed = asyncio.Event()
        self._last_refusal = ""

    @property
    def state(self) -> ClusterState:
        return self._state

    def append(self, event: Event) -> ClusterState:
        indexed = IndexedEvent(index=self._state.last_index + 1, event=event)
        self._state = apply(self._state, indexed)
        self._log.append(indexed)
        self._changed.set()
        return self._state

    def register_shard(self, shard: ShardServer) -> None:
        if self._state.shards.get(shard.shard_id) != shard:
            logger.info("shard server %s at %s registered", shard.shard_id, shard.address)
            self.append(ShardRegistered(shard=shard))

    def register_model(self, model: ModelSpec) -> None:
        if self._state.models.get(model.model_id) != model:
            self.append(ModelRegistered(model=model))

    async def run(self) -> None:
        """Acts on the state until cancelled: one planned action at a time."""
        while True:
            action = plan(self._state, self._minimum_shards)
            match action:
                case None:
                    self._changed.clear()
                    await self._changed.wait()
                case CannotPlace():
                    if action.reason != self._last_refusal:
                        logger.warning("cannot place %s: %s", action.model_id, action.reason)
                        self._last_refusal = action.reason
                    self._changed.clear()
                    await self._changed.wait()
                case RemoveInstance():
                    self.append(InstanceRemoved(instance_id=action.instance_id))
                    await asyncio.sleep(RETRY_DELAY_SECONDS)
                case PlaceInstance():
                    await self._place(action)

    async def _place(self, action: PlaceInstance) -> None:
        model = self._state.models[action.model_id]
        logger.info("placing %s: %s", action.model_id, action.placement.explanation)
        self.append(
            InstancePlaced(
                instance_id=action.instance_id,
                model_id=action.model_id,
                num_layers=model.num_layers,
                stages=action.placement.stages,
            )
        )
        instance = self._state.instances[action.instance_id]
        results = await asyncio.gather(*(self._assign(instance, index) for index in range(len(instance.stages))))
        for stage, problem in zip(instance.stages, results, strict=True):
            if problem is None:
                self.append(StageLoaded(instance_id=instance.instance_id, shard_id=stage.shard_id))
            else:
                logger.warning("shard %s failed to load its stage: %s", stage.shard_id, problem)
                self.append(StageFailed(instance_id=instance.instance_id, shard_id=stage.shard_id, message=problem))
        if all(problem is None for problem in results):
            logger.info("instance %s is ready", instance.instance_id)
            self.append(InstanceReady(instance_id=instance.instance_id))

    async def _assign(self, instance: ModelInstance, index: int) -> str | None:
        """Tells one shard to load its stage; returns why it failed, or None."""
        stage: StageAssignment = instance.stages[index]
        following = instance.stages[(index + 1) % len(instance.stages)]
        shard = self._state.shards[stage.shard_id]
        next_address = self._state.shards[following.shard_id].address
        request = shard_pb2.AssignRequest(
            term=self._state.term,
            instance_id=instance.instance_id,
            model_id=instance.model_id,
            start_layer=stage.start_layer,
            end_layer=stage.end_layer,
            num_layers=instance.num_layers,
            next_address=next_address,
            prefill_step_size=self._prefill_step_size,
        )
        async with grpc.aio.insecure_channel(shard.address) as channel:
            try:
                await shard_pb2_grpc.ShardStub(channel).Assign(request, timeout=ASSIGN_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"
        return None
