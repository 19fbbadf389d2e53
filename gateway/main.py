"""`strata gateway`: the OpenAI-compatible HTTP front door over the shard pipeline."""

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from discovery.peer_source import DiscoveryOptions
from gateway.api_keys import ApiKeyGuard, load_api_keys
from gateway.app import create_app
from gateway.cluster_auth import cluster_key_check
from gateway.cluster_view import ClusterView
from gateway.completion_engine import CompletionEngine
from gateway.cors import with_cors
from gateway.generation_request import ModelNotFoundError
from gateway.metrics import GatewayMetrics, HttpMetrics
from gateway.model_routes import model_router
from gateway.ollama_pull import ollama_pull_router
from gateway.pipeline_client import PipelineClient
from gateway.presence import GatewayPresence
from gateway.pull_routes import PullClient, pull_router
from gateway.request_ids import RequestIds
from gateway.store_routes import store_router
from gateway.tokenization import ModelTokenizer
from services.kernel.ids import ModelId
from services.kernel.settings import models_root, node_id
from services.models.model_store import ModelStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayOptions:
    home: Path
    host: str
    port: int
    coordinator: str | None
    """None: follow the coordinator discovery finds."""
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    api_key_file: Path | None = None
    """Keys `/v1/*` requires (with `$STRATA_API_KEYS`); none: open."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the gateway (`gateway/cors.py`); none by default."""


class StoreTokenizers:
    """Tokenizers of the served models, loaded once from the local model store."""

    def __init__(self, store: ModelStore, view: ClusterView) -> None:
        self._store = store
        self._view = view
        self._loaded: dict[ModelId, ModelTokenizer] = {}
        self._lock = threading.Lock()

    def tokenizer_for(self, model_id: ModelId) -> ModelTokenizer:
        if model_id not in self._view.served_models() or not self._store.has_model(model_id):
            raise ModelNotFoundError(model_id)
        with self._lock:
            tokenizer = self._loaded.get(model_id)
            if tokenizer is None:
                tokenizer = ModelTokenizer.from_directory(self._store.model_dir(model_id))
                self._loaded[model_id] = tokenizer
            return tokenizer


async def serve_gateway(options: GatewayOptions) -> None:
    store = ModelStore(models_root(options.home))
    presence = GatewayPresence(options.discovery, node_id(options.home), f"{options.host}:{options.port}", store)
    await presence.start()
    view = ClusterView(presence.coordinator_address(options.coordinator))
    view.start()
    fetching = asyncio.create_task(presence.keep_tokenizers(view.served_models, lambda: view.coordinator_address))
    pipeline = PipelineClient(view)
    metrics = GatewayMetrics(pipeline.recovery_counts)
    engine = CompletionEngine(pipeline, StoreTokenizers(store, view), metrics)
    api_keys = load_api_keys(options.api_key_file)
    http_app = create_app(engine, view, cluster=view, activity=pipeline.activity)
    http_app.include_router(store_router(store, view.served_models))
    require_key = cluster_key_check(api_keys, options.home)
    pulls = PullClient(lambda: view.coordinator_address, view)
    http_app.include_router(pull_router(pulls, require_key))  # before model_router: its paths end in /{action}
    http_app.include_router(ollama_pull_router(pulls, require_key))
    http_app.include_router(model_router(lambda: view.coordinator_address, require_key))
    app: ASGIApp = http_app
    if api_keys:
        app = ApiKeyGuard(app, api_keys)
        logger.info("gateway requires one of %d API keys on /v1/*", len(api_keys))
    app = with_cors(app, options.cors_origins)  # preflights carry no key: answered before the key check
    if options.cors_origins:
        logger.info("gateway allows cross-origin requests from %s", ", ".join(options.cors_origins))
    app = HttpMetrics(app, metrics)  # refusals are counted too, and /metrics needs no key
    app = RequestIds(app)  # outermost: every response has its X-Request-Id, every line of it logs it
    server = uvicorn.Server(
        uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", lifespan="off")
    )
    logger.info("gateway listening on http://%s:%d", options.host, options.port)

    def request_exit() -> None:
        server.should_exit = True

    # uvicorn re-raises the signal it stopped for once it has shut down; with a handler of ours in
    # place, that re-raise does not kill the process, so the cleanup below (unannouncing the gateway
    # from discovery, closing channels) runs and the gateway exits 0.
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, request_exit)
    try:
        await server.serve()
    finally:
        fetching.cancel()
        await pipeline.close()
        await view.stop()
        await presence.stop()


def run_gateway(options: GatewayOptions) -> None:
    asyncio.run(serve_gateway(options))
