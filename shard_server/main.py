"""`strata shard`: serve a stage of a model and keep registered with the coordinator."""

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from services.grpc_server import GrpcServer, insecure_channel
from services.ids import ShardId
from services.model_store import ModelStore
from services.settings import models_root, node_id
from shard_server.service import ShardService
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
    coordinator: str
    memory_limit_bytes: int | None


def offered_memory(limit: int | None) -> int:
    available = int(psutil.virtual_memory().available * MEMORY_HEADROOM)
    return min(available, limit) if limit is not None else available


async def _keep_registered(request: coordinator_pb2.RegisterShardRequest, coordinator: str) -> None:
    """Registers now and again every few seconds; the coordinator treats it as idempotent."""
    registered = False
    async with insecure_channel(coordinator) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        while True:
            try:
                await stub.RegisterShard(request, timeout=5)
                if not registered:
                    logger.info("registered with coordinator %s", coordinator)
                registered = True
            except grpc.aio.AioRpcError as error:
                if registered:
                    logger.warning("coordinator %s unreachable: %s", coordinator, error.details())
                registered = False
            await asyncio.sleep(REGISTER_INTERVAL_SECONDS)


async def serve_shard(options: ShardOptions) -> None:
    store = ModelStore(models_root(options.home))
    host_node = node_id(options.home)
    server = GrpcServer(options.host, options.port, [shard_pb2.DESCRIPTOR.services_by_name["Shard"].full_name])
    address = f"{options.host}:{server.port}"
    shard_id = ShardId(f"{host_node}:{server.port}")
    service = ShardService(shard_id, address, store)
    shard_pb2_grpc.add_ShardServicer_to_server(service, server.server)
    service.start()
    await server.start()
    logger.info("shard %s listening on %s", shard_id, address)
    registration = coordinator_pb2.RegisterShardRequest(
        shard_id=shard_id,
        node_id=host_node,
        address=address,
        available_memory_bytes=offered_memory(options.memory_limit_bytes),
        device="cpu",
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    registering = asyncio.create_task(_keep_registered(registration, options.coordinator))
    await stopping.wait()
    logger.info("shard %s stopping", shard_id)
    registering.cancel()
    await server.stop()
    await service.stop()
