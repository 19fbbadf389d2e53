"""The gateway's FastAPI application: the OpenAI and Anthropic Messages routes, `/health`, and the one error mapping.

`create_app` only wires what it is given (the engine and the model catalog), so tests build the
whole HTTP surface in memory and the `strata gateway` command builds it over the real pipeline.

`GET /health` answers 200 `{"status": "ready"}` when any served model has a ready instance, else
503 `{"status": "starting"}`.
"""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gateway.anthropic_routes import anthropic_router
from gateway.cluster_routes import ClusterSource, cluster_router
from gateway.completion_engine import CompletionEngine
from gateway.dashboard_routes import dashboard_router
from gateway.embedding_routes import embedding_router
from gateway.embeddings import EmbeddingEngine
from gateway.errors import install_error_handlers
from gateway.instance_activity import InstanceActivity
from gateway.ollama_routes import ollama_router
from gateway.openai_routes import ModelCatalog, openai_router
from gateway.request_body import DEFAULT_MAX_BODY_BYTES
from gateway.responses_routes import responses_router


def create_app(
    engine: CompletionEngine,
    catalog: ModelCatalog,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cluster: ClusterSource | None = None,
    activity: InstanceActivity | None = None,
) -> FastAPI:
    """With `cluster`, also `/v1/cluster`, `/v1/cluster/events` and the dashboard at `/`."""
    app = FastAPI(title="strata gateway", summary="One language model, split across machines, as OpenAI.")
    install_error_handlers(app)
    app.include_router(openai_router(engine, catalog, max_body_bytes=max_body_bytes))
    embeddings = EmbeddingEngine(engine.token_source, engine.tokenizers)
    app.include_router(embedding_router(embeddings, max_body_bytes=max_body_bytes))
    app.include_router(anthropic_router(engine, max_body_bytes=max_body_bytes))
    app.include_router(responses_router(engine, max_body_bytes=max_body_bytes))
    app.include_router(ollama_router(engine, catalog, max_body_bytes=max_body_bytes))
    if cluster is not None:
        app.include_router(cluster_router(cluster, activity if activity is not None else InstanceActivity()))
        app.include_router(dashboard_router())

    @app.get("/health")
    async def health() -> JSONResponse:
        if any(catalog.is_ready(model_id) for model_id in catalog.served_models()):
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    return app
