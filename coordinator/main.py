"""`strata coordinator`: one replica that accepts shards, places models and publishes state."""

import asyncio
import contextlib
import logging
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.cluster_log import CLUSTER_LOG
from coordinator.metrics import coordinator_registry, replica_snapshot
from coordinator.model_pulls import ModelPulls
from coordinator.presence import CoordinatorPresence
from coordinator.raft.interface import NotLeaderError
from coordinator.raft.membership import PeerSet
from coordinator.raft.node import RaftNode
from coordinator.raft.peers import PeerClient
from coordinator.raft.service import RaftService
from coordinator.raft.storage import RaftStorage
from coordinator.replica import CoordinatorReplica
from coordinator.service import CoordinatorService
from discovery.identity_service import PEER_SERVICE_NAME, add_peer_service
from discovery.peer import PeerInfo
from discovery.peer_source import DiscoveryOptions
from services.cluster.state import ModelSpec, RegisteredShard
from services.kernel.compute_dtype import ComputeDtypeChoice
from services.kernel.devices import parse_device_kind
from services.kernel.ids import ModelId
from services.kernel.settings import models_root, node_id
from services.models.model_file_service import MODEL_FILES_SERVICE_NAME, add_model_file_service
from services.models.model_spec import model_spec
from services.models.model_store import ModelStore
from services.platform.grpc_server import GrpcServer
from services.platform.metrics_server import DEFAULT_METRICS_PORT, serve_metrics_beside
from strata_wire import coordinator_pb2, coordinator_pb2_grpc, raft_pb2, raft_pb2_grpc

logger = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_EVERY = 1000


@dataclass(frozen=True)
class CoordinatorOptions:
    home: Path
    host: str
    port: int
    models: tuple[ModelId, ...]
    minimum_shards: int
    prefill_step_size: int
    compute_dtype: ComputeDtypeChoice
    expect: int = 1
    """Replicas to wait for before bootstrapping a new cluster (Consul's bootstrap_expect)."""
    peers: tuple[str, ...] = ()
    """Other replicas' host:port, known without discovery."""
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    fresh_state: bool = False
    """Start from an empty log (a local cluster whose shards all start anew)."""
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    """How to find other services; replica addresses found this way go to `PeerSet.update`."""
    instances_per_model: int = 1
    """Instances of each model to keep, each on shard servers of its own (coordinator.planner)."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """`/metrics` HTTP port (services.platform.metrics_server); 0: a free one."""


def _shard_from_peer(peer: PeerInfo) -> RegisteredShard | None:
    """A shard server announced over discovery, as state records it; None when it lacks resources."""
    if peer.available_memory_bytes <= 0:
        return None
    device = parse_device_kind(peer.device)
    if device is None:
        return None
    return RegisteredShard(
        shard_id=peer.shard_id,
        node_id=peer.node_id,
        address=peer.address,
        available_memory_bytes=peer.available_memory_bytes,
        device=device,
        work_per_second=peer.work_per_second,
    )


async def serve_coordinator(options: CoordinatorOptions) -> None:
    store = ModelStore(models_root(options.home))
    models: list[ModelSpec] = []
    for model_id in options.models:
        if not store.has_model(model_id):
            raise SystemExit(f"model {model_id!r} is not in the model store {store.root}; see `strata models list`")
        models.append(model_spec(model_id, store.model_dir(model_id), options.compute_dtype))
    server = GrpcServer(
        options.host,
        options.port,
        [
            coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
            raft_pb2.DESCRIPTOR.services_by_name["Raft"].full_name,
            PEER_SERVICE_NAME,
            MODEL_FILES_SERVICE_NAME,
        ],
    )
    replica_id = f"{options.host}:{server.port}"
    state_folder = options.home / "coordinator"
    if options.fresh_state and state_folder.exists():
        logger.info("discarding the stored cluster state in %s", state_folder)
        shutil.rmtree(state_folder)
    storage = RaftStorage(state_folder, CLUSTER_LOG)
    node = RaftNode(replica_id, storage, CLUSTER_LOG, PeerClient, snapshot_every=options.snapshot_every)
    peer_set = PeerSet(node, options.expect)
    peer_set.update(options.peers)
    replica = CoordinatorReplica(
        node,
        tuple(models),
        options.minimum_shards,
        options.prefill_step_size,
        options.compute_dtype,
        voter_target=options.expect,
        instances_per_model=options.instances_per_model,
        read_model_spec=lambda model_id: (
            model_spec(model_id, store.model_dir(model_id), options.compute_dtype)
            if store.has_model(model_id)
            else None
        ),
    )
    presence = CoordinatorPresence(options.discovery, node_id(options.home), replica_id, store)
    metrics = serve_metrics_beside(
        coordinator_registry(lambda: replica_snapshot(replica)), options.host, options.metrics_port, server.port
    )
    pulls = ModelPulls(options.home, node_id(options.home), store)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorService(replica, presence.discovery.refused, lambda: metrics.address, pulls), server.server
    )
    raft_pb2_grpc.add_RaftServicer_to_server(RaftService(node), server.server)
    add_peer_service(server.server, presence.identity)
    add_model_file_service(server.server, store)
    await server.start()
    node.start()
    logger.info("coordinator listening on %s:%d, serving %s", options.host, server.port, ", ".join(options.models))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    acting = asyncio.create_task(replica.run())
    joining = asyncio.create_task(peer_set.run())
    await presence.start()

    async def offer_shard(peer: PeerInfo) -> None:
        shard = _shard_from_peer(peer)
        if shard is not None and shard.shard_id not in replica.state.shards:
            with contextlib.suppress(NotLeaderError):  # the leader learns it from its own discovery
                await replica.register_shard(shard)

    following = asyncio.create_task(
        presence.follow(lambda found: peer_set.update([*options.peers, *found]), offer_shard)
    )
    await stopping.wait()
    logger.info("coordinator stopping")
    acting.cancel()
    joining.cancel()
    following.cancel()
    await presence.stop()
    await pulls.stop()
    await server.stop()
    await node.stop()
    await asyncio.to_thread(metrics.stop)
