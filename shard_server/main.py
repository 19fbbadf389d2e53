"""`strata shard`: serve a stage of a model and keep registered with the coordinator."""

import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc
import psutil

from discovery.identity_service import PEER_SERVICE_NAME, add_peer_service
from discovery.peer_source import DiscoveryOptions
from services.kernel.ids import ShardId
from services.kernel.settings import models_root, node_id
from services.models.model_file_service import MODEL_FILES_SERVICE_NAME, add_model_file_service
from services.models.model_store import ModelStore
from services.platform.compute_device import detect_compute_device, measure_work_per_second, offered_device_memory
from services.platform.grpc_server import GrpcServer, cluster_channel
from services.platform.metrics_server import DEFAULT_METRICS_PORT, serve_metrics_beside
from shard_server.admission import AdmissionLimits
from shard_server.metrics import shard_registry
from shard_server.presence import ShardPresence
from shard_server.service import ShardService
from shard_server.wire import registration_to_pb
from strata_wire import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

REGISTER_INTERVAL_SECONDS = 2.0
MEMORY_HEADROOM = 0.85
"""Share of the host's available memory a shard offers; the rest is left to the OS and other processes."""


@dataclass(frozen=True)
class ShardOptions:
    home: Path
    host: str
    port: int
    coordinator: str | None
    """None: register with the coordinators discovery finds."""
    memory_limit_bytes: int | None
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    metrics_port: int = DEFAULT_METRICS_PORT
    """`/metrics` HTTP port (services.platform.metrics_server); 0: a free one."""


def run_shard(options: ShardOptions) -> NoReturn:
    """Serves until SIGTERM or SIGINT, then exits 0 without the interpreter's native teardown.

    By then the server, the stage worker and every link are closed; but MLX's and gRPC's own native
    threads outlive them, and their static destructors at interpreter exit now and then abort the
    process ("terminate called without an active exception", SIGABRT), which a service manager
    reads as a crash on every other stop.
    """
    asyncio.run(serve_shard(options))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def offered_memory(limit: int | None) -> int:
    available = int(psutil.virtual_memory().available * MEMORY_HEADROOM)
    return min(available, limit) if limit is not None else available


async def _keep_registered(
    request: Callable[[], coordinator_pb2.RegisterShardRequest], coordinators: Callable[[], Sequence[str]]
) -> None:
    """Registers with every coordinator known now, and again every few seconds (idempotent for them)."""
    registered: set[str] = set()
    while True:
        for coordinator in coordinators():
            async with cluster_channel(coordinator) as channel:
                try:
                    await coordinator_pb2_grpc.CoordinatorStub(channel).RegisterShard(request(), timeout=5)
                    if coordinator not in registered:
                        logger.info("registered with coordinator %s", coordinator)
                    registered.add(coordinator)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                        # Another cluster's coordinator, or this home lacks the token: say so on every try.
                        logger.error("coordinator %s refused this shard: %s", coordinator, error.details())
                    elif coordinator in registered:
                        logger.warning("coordinator %s unreachable: %s", coordinator, error.details())
                    registered.discard(coordinator)
        await asyncio.sleep(REGISTER_INTERVAL_SECONDS)


async def serve_shard(options: ShardOptions) -> None:
    # First: a stop asked for while the shard starts (it serves gRPC a second or two before its
    # announcement is up) then ends it as cleanly as one asked for later, not by the signal's default.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    store = ModelStore(models_root(options.home))
    host_node = node_id(options.home)
    server = GrpcServer(
        options.host,
        options.port,
        [shard_pb2.DESCRIPTOR.services_by_name["Shard"].full_name, PEER_SERVICE_NAME, MODEL_FILES_SERVICE_NAME],
    )
    address = f"{options.host}:{server.port}"
    shard_id = ShardId(f"{host_node}:{server.port}")
    device = detect_compute_device()
    work_per_second = await asyncio.to_thread(measure_work_per_second, device)
    logger.info(
        "computing on %s (%s), %.2e parameters/s in a one-row product; compute dtype auto means %s here",
        device.kind,
        device.name,
        work_per_second,
        device.auto_compute_dtype,
    )
    presence = ShardPresence(
        options.discovery,
        host_node,
        address,
        store,
        offered_device_memory(device, offered_memory(None), MEMORY_HEADROOM),
        options.memory_limit_bytes,
        device,
        work_per_second,
    )
    coordinators = presence.coordinators(options.coordinator)
    service = ShardService(
        shard_id,
        address,
        store,
        fetch_stage=presence.fetch_stage_hook(coordinators),
        admission=options.admission,
        fetched=presence.fetched,
        auto_compute_dtype=device.auto_compute_dtype,
    )
    shard_pb2_grpc.add_ShardServicer_to_server(service, server.server)
    add_peer_service(server.server, presence.identity)
    add_model_file_service(server.server, store)
    metrics = serve_metrics_beside(
        shard_registry(service.metrics_snapshot), options.host, options.metrics_port, server.port
    )
    service.start()
    await server.start()
    logger.info("shard %s listening on %s", shard_id, address)
    await presence.start()

    incarnation = uuid.uuid4().hex  # tells the coordinator when this shard restarted and lost its stage

    def registration() -> coordinator_pb2.RegisterShardRequest:
        memory = psutil.virtual_memory()  # reads /proc/meminfo: cheap enough for the loop every 2 s
        return registration_to_pb(
            host_memory_total_bytes=memory.total,
            host_memory_free_bytes=memory.available,
            shard_id=shard_id,
            node_id=host_node,
            address=address,
            available_memory_bytes=presence.memory_share(),
            incarnation=incarnation,
            device=device.kind,
            work_per_second=work_per_second,
            metrics_address=metrics.address,
            fetched=presence.fetched,
        )

    registering = asyncio.create_task(_keep_registered(registration, coordinators))
    await stopping.wait()
    logger.info("shard %s stopping", shard_id)
    registering.cancel()
    await presence.stop()
    # The stream to the next shard ends first, so that its server sees it close instead of cancelling
    # it at the end of its own grace period (when the whole ring stops at once).
    await service.close_link()
    await server.stop()
    await service.stop()
    await asyncio.to_thread(metrics.stop)
