"""A coordinator replica: proposes events to the replicated log and carries out the planner's actions.

Every replica applies committed events (the Raft node does, in order); only the leader, while its
lease is live, plans and instructs shards, with its term so shards refuse a deposed leader.
"""

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from coordinator.cluster_log import ClusterNode, command
from coordinator.membership_changes import promoted, with_learner, without_replica
from coordinator.placement import Placement, PlacementRefusal, place
from coordinator.planner import CannotPlace, PlaceInstance, RemoveInstance, plan
from coordinator.raft.interface import NotLeaderError
from coordinator.raft.membership import caught_up_learner
from coordinator.serving_preview import ServingPreview, preview_serving
from coordinator.shard_leases import DEFAULT_SHARD_LEASE_SECONDS, ShardLeases
from coordinator.wire import assign_request_to_pb
from services.cluster.events import (
    CommandOrigin,
    Event,
    InstancePlaced,
    InstanceReady,
    InstanceRemoved,
    ModelRegistered,
    ModelServed,
    ModelUnserved,
    NodeDrainRequested,
    ShardLeaseExpired,
    ShardRegistered,
    StageFailed,
    StageLoaded,
)
from services.cluster.state import ClusterState, ModelInstance, ModelSpec, RegisteredShard, StageAssignment
from services.kernel.compute_dtype import ComputeDtypeChoice
from services.kernel.ids import ModelId, NodeId
from services.kernel.status_errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from services.models.model_files import ModelManifest
from services.models.model_spec import spec_from_manifest
from services.platform.grpc_server import cluster_channel
from strata_wire import shard_pb2_grpc

logger = logging.getLogger(__name__)

ASSIGN_TIMEOUT_SECONDS = 600.0
RETRY_DELAY_SECONDS = 2.0
IDLE_RECHECK_SECONDS = 1.0


class MembershipChangeRefusedError(FailedPreconditionError):
    """The replica cannot be removed (the message says why)."""


class UnknownNodeError(NotFoundError):
    """No shard server of the node is registered."""


class UnknownModelError(NotFoundError):
    """The model is not registered."""


class ModelDoesNotFitError(ResourceExhaustedError):
    """The free shard servers lack memory for the model (the message says how many bytes)."""


ModelSpecReader = Callable[[ModelId], ModelSpec | None]
"""The spec of a model of this replica's store, None when the store lacks it (reads files: not on the loop)."""


class CoordinatorReplica:
    def __init__(
        self,
        node: ClusterNode,
        models: tuple[ModelSpec, ...],
        minimum_shards: int,
        prefill_step_size: int,
        compute_dtype: ComputeDtypeChoice = "stored",
        shard_lease_seconds: float = DEFAULT_SHARD_LEASE_SECONDS,
        voter_target: int = 1,
        instances_per_model: int = 1,
        read_model_spec: ModelSpecReader = lambda model_id: None,
    ) -> None:
        self._node = node
        self._read_model_spec = read_model_spec
        self._instances_per_model = instances_per_model
        self._voter_target = voter_target
        self._leases = ShardLeases(shard_lease_seconds)
        self._leading_term = 0
        self._models = models
        self._minimum_shards = minimum_shards
        self._prefill_step_size = prefill_step_size
        self._compute_dtype: ComputeDtypeChoice = compute_dtype
        self._last_refusal = ""

    @property
    def node(self) -> ClusterNode:
        return self._node

    @property
    def shard_lease_expiries(self) -> int:
        """Shard leases this replica expired (while leading) since it started."""
        return self._leases.expiries

    @property
    def _state(self) -> ClusterState:
        return self._node.state

    @property
    def state(self) -> ClusterState:
        return self._node.state

    async def append(self, event: Event, origin: CommandOrigin | None = None) -> ClusterState:
        """Commits `event` through the replicated log; raises NotLeaderError on a follower."""
        return await self._node.propose(command(event, origin))

    async def register_shard(self, shard: RegisteredShard, origin: CommandOrigin | None = None) -> ClusterState:
        self._leases.renew(shard.shard_id, time.monotonic())
        if self._state.shards.get(shard.shard_id) != shard or origin is not None:
            logger.info("shard server %s at %s registered", shard.shard_id, shard.address)
            return await self.append(ShardRegistered(shard=shard), origin)
        if not self._node.leads_with_lease():
            raise NotLeaderError(self._node.leader_id)
        return self._state

    async def add_learner(self, replica_id: str) -> ClusterState:
        change = with_learner(self._node.voters, self._node.learners, replica_id)
        if change is None:
            if not self._node.leads_with_lease():
                raise NotLeaderError(self._node.leader_id)
            return self._state
        logger.info("replica %s joins as a learner", replica_id)
        return await self.append(change)

    async def remove_replica(self, replica_id: str) -> ClusterState:
        """Commits the membership without `replica_id`; raises `MembershipChangeRefusedError` saying why not."""
        if not self._node.leads_with_lease():
            raise NotLeaderError(self._node.leader_id)
        change = without_replica(self._node.voters, self._node.learners, replica_id, self._node.replica_id)
        if isinstance(change, str):
            raise MembershipChangeRefusedError(change)
        logger.info("removing replica %s", replica_id)
        return await self.append(change)

    async def drain_node(self, node_id: NodeId) -> ClusterState:
        """Commits the drain of `node_id`; raises `UnknownNodeError` when none of its shards is registered."""
        if not self._node.leads_with_lease():
            raise NotLeaderError(self._node.leader_id)
        if all(shard.node_id != node_id for shard in self._state.shards.values()):
            raise UnknownNodeError(f"no shard server of node {node_id!r} is registered")
        logger.info("draining node %s", node_id)
        return await self.append(NodeDrainRequested(node_id=node_id))

    def preview_placement(self, model_id: ModelId) -> Placement | PlacementRefusal:
        """How `model_id` would be placed on the registered shards now; `UnknownModelError` if unregistered."""
        state = self._state
        model = state.models.get(model_id)
        if model is None:
            raise UnknownModelError(f"model {model_id!r} is not registered")
        return place(model, [state.shards[shard_id] for shard_id in sorted(state.shards)])

    async def _spec(self, model_id: ModelId) -> ModelSpec:
        spec = await asyncio.to_thread(self._read_model_spec, model_id)
        if spec is None:
            raise UnknownModelError(
                f"model {model_id!r} is not in the coordinator's model store; see `strata models list`"
            )
        return spec

    async def preview_serving(self, model_id: ModelId, instances: int) -> ServingPreview:
        """Where `model_id` would go with `instances` copies now; `UnknownModelError` if the store lacks it."""
        return preview_serving(self._state, await self._spec(model_id), instances)

    async def preview_pulled(self, model_id: ModelId, manifest: ModelManifest, instances: int) -> ServingPreview:
        """Whether a model about to be pulled fits the cluster's memory: over every shard server not
        draining, as if none served anything (pulling stores it; serving it may need others stopped)."""
        spec = await asyncio.to_thread(spec_from_manifest, model_id, manifest, self._compute_dtype)
        return preview_serving(self._state.model_copy(update={"instances": {}}), spec, instances)

    async def serve_model(self, model_id: ModelId, instances: int) -> ServingPreview:
        """Commits `ModelServed` when the model fits the free shard servers; else `ModelDoesNotFitError`
        (refused now, never retried). A model served already only gets its new instance count."""
        if not self._node.leads_with_lease():
            raise NotLeaderError(self._node.leader_id)
        spec = await self._spec(model_id)
        state = self._state
        have = sum(1 for instance in state.instances.values() if instance.model_id == model_id)
        if model_id in state.models and have > 0:
            # Served: only the copies it lacks need room.
            preview = preview_serving(state, spec, max(instances - have, 0)) if instances > have else None
        else:
            preview = preview_serving(state, spec, instances)
        if preview is not None and not preview.fits:
            raise ModelDoesNotFitError(preview.reason or f"model {model_id} does not fit")
        logger.info("serving %s with %d instances", model_id, instances)
        await self.append(ModelServed(model=spec, instances=instances))
        return preview or preview_serving(self._state, spec, 0)

    async def unserve_model(self, model_id: ModelId) -> ClusterState:
        """Commits `ModelUnserved`; `UnknownModelError` when the model is not served."""
        if not self._node.leads_with_lease():
            raise NotLeaderError(self._node.leader_id)
        if model_id not in self._state.models:
            raise UnknownModelError(f"model {model_id!r} is not served")
        logger.info("unserving %s", model_id)
        return await self.append(ModelUnserved(model_id=model_id))

    async def run(self) -> None:
        """Acts on the state until cancelled, while this replica leads: one planned action at a time."""
        while True:
            if not self._node.leads_with_lease():
                await self._node.wait_for_change(IDLE_RECHECK_SECONDS)
                continue
            if self._leading_term != self._node.current_term:
                self._leading_term = self._node.current_term
                self._leases.start_leading(time.monotonic())
            try:
                await self._act()
            except NotLeaderError:
                logger.info("no longer the leader; stopping to act")

    async def _act(self) -> None:
        promotion = promoted(self._node.voters, self._node.learners, caught_up_learner(self._node), self._voter_target)
        if promotion is not None:
            logger.info("promoting to voter: %s", ", ".join(promotion.voters))
            await self.append(promotion)
        for shard_id in self._leases.expired(self._state.shards, time.monotonic()):
            logger.warning("shard server %s stopped renewing its lease; re-placing what it held", shard_id)
            await self.append(ShardLeaseExpired(shard_id=shard_id))
            self._leases.expire(shard_id)
        for model in self._models:
            state = self._state
            if model.model_id in state.unserved_models or model.model_id in state.served_instances:
                continue  # changed at run time since: that command wins over the start-up list
            if state.models.get(model.model_id) != model:
                await self.append(ModelRegistered(model=model))
        action = plan(self._state, self._minimum_shards, self._instances_per_model)
        match action:
            case None:
                await self._node.wait_for_change(IDLE_RECHECK_SECONDS)
            case CannotPlace():
                if action.reason != self._last_refusal:
                    logger.warning("cannot place %s: %s", action.model_id, action.reason)
                    self._last_refusal = action.reason
                await self._node.wait_for_change(IDLE_RECHECK_SECONDS)
            case RemoveInstance():
                if action.reason:
                    logger.info("removing %s: %s", action.instance_id, action.reason)
                await self.append(InstanceRemoved(instance_id=action.instance_id))
                await asyncio.sleep(RETRY_DELAY_SECONDS)
            case PlaceInstance():
                await self._place(action)

    async def _place(self, action: PlaceInstance) -> None:
        model = self._state.models[action.model_id]
        logger.info("placing %s: %s", action.model_id, action.placement.explanation)
        await self.append(
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
                await self.append(StageLoaded(instance_id=instance.instance_id, shard_id=stage.shard_id))
            else:
                logger.warning("shard %s failed to load its stage: %s", stage.shard_id, problem)
                await self.append(
                    StageFailed(instance_id=instance.instance_id, shard_id=stage.shard_id, message=problem)
                )
        if all(problem is None for problem in results):
            logger.info("instance %s is ready", instance.instance_id)
            await self.append(InstanceReady(instance_id=instance.instance_id))

    def _kv_budget_bytes_per_layer(self, instance: ModelInstance) -> int:
        """The KV room placement reserved per layer: the first shard admits requests within it."""
        model = self._state.models.get(instance.model_id)
        return model.kv_bytes_per_layer if model is not None else 0

    def _kv_max_sequences(self, instance: ModelInstance) -> int:
        """The cap on running requests the room of the model's sliding layers assumes (0: none)."""
        model = self._state.models.get(instance.model_id)
        return model.kv_max_sequences if model is not None else 0

    async def _assign(self, instance: ModelInstance, index: int) -> str | None:
        """Tells one shard to load its stage; returns why it failed, or None."""
        stage: StageAssignment = instance.stages[index]
        following = instance.stages[(index + 1) % len(instance.stages)]
        shard = self._state.shards[stage.shard_id]
        next_address = self._state.shards[following.shard_id].address
        request = assign_request_to_pb(
            term=self._state.term,
            instance=instance,
            stage=stage,
            next_address=next_address,
            prefill_step_size=self._prefill_step_size,
            compute_dtype=self._compute_dtype,
            kv_budget_bytes_per_layer=self._kv_budget_bytes_per_layer(instance),
            kv_max_sequences=self._kv_max_sequences(instance),
        )
        async with cluster_channel(shard.address) as channel:
            try:
                await shard_pb2_grpc.ShardStub(channel).Assign(request, timeout=ASSIGN_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"
        return None
