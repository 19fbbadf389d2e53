"""`strata coordinator`: one replica that accepts shards, places models and publishes state."""

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from coordinator.model_spec import model_spec
from coordinator.replica import CoordinatorReplica
from coordinator.service import CoordinatorService
from services.grpc_server import GrpcServer
from services.ids import ModelId
from services.model_store import ModelStore
from services.settings import models_root
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorOptions:
    home: Path
    host: str
    port: int
    models: tuple[ModelId, ...]
    minimum_shards: int
    prefill_step_size: int


async def serve_coordinator(options: CoordinatorOptions) -> None:
    store = ModelStore(models_root(options.home))
    replica = CoordinatorReplica(options.minimum_shards, options.prefill_step_size)
    for model_id in options.models:
        if not store.has_model(model_id):
            raise SystemExit(f"model {model_id!r} is not in the model store {store.root}; see `strata models list`")
        replica.register_model(model_spec(model_id, store.model_dir(model_id)))
    server = GrpcServer(
        options.host, options.port, [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name]
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorService(replica), server.server)
    await server.start()
    logger.info("coordinator listening on %s:%d, serving %s", options.host, server.port, ", ".join(options.models))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    acting = asyncio.create_task(replica.run())
    await stopping.wait()
    logger.info("coordinator stopping")
    acting.cancel()
    await server.stop()
