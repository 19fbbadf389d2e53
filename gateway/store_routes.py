"""`GET /v1/cluster/models`: the model cards of this gateway's store, each marked served or not.

Open without a key (read-only, like the rest of the cluster view). A model whose weights this host's
store lacks (a gateway on its own host keeps only configs and tokenizers) is listed by id with
`card_available: false`. Cards read files, so they are built off the event loop.
"""

import asyncio
from collections.abc import Callable, Sequence

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.kernel.ids import ModelId
from services.models.model_card import model_card
from services.models.model_store import ModelStore


def model_list_entry(store: ModelStore, model_id: ModelId, served: bool) -> dict[str, object]:
    try:
        card = model_card(model_id, store.model_dir(model_id))
    except (OSError, ValueError):
        return {"id": model_id, "served": served, "card_available": False}
    return {
        "id": card.id,
        "served": served,
        "card_available": True,
        "architecture": card.architecture,
        "num_layers": card.num_layers,
        "parameters": card.parameters,
        "bytes": card.stored_bytes,
        "bytes_by_compute_dtype": card.bytes,
        "compute_dtype": card.stored_dtype,
        "context_length": card.context_length,
        "quantization": card.quantization,
        "supports_tools": card.supports_tools,
        "supports_reasoning": card.supports_reasoning,
        "generation_defaults": card.generation_defaults,
        "runnable": card.runnable,
        "unsupported_reason": card.unsupported_reason,
    }


def model_list(store: ModelStore, served_models: Sequence[ModelId]) -> dict[str, object]:
    served = set(served_models)
    stored = store.list_models()
    ids = sorted(set(stored) | served)
    return {"object": "list", "data": [model_list_entry(store, model_id, model_id in served) for model_id in ids]}


def store_router(store: ModelStore, served_models: Callable[[], Sequence[ModelId]]) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/cluster/models")
    async def list_models() -> JSONResponse:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse(await asyncio.to_thread(model_list, store, list(served_models())))

    return router
