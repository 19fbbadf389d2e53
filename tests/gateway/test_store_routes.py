"""`GET /v1/cluster/models`: a card per stored model, marked served or not; a served model whose weights
this store lacks is listed by id without a card; the route is open without a key."""

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.api_keys import ApiKeyGuard
from gateway.store_routes import store_router
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_import import import_directory
from services.models.model_store import ModelStore
from tests.services.test_model_store import single_file_model

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_the_model_list_marks_served_models_and_needs_no_key(tmp_path: Path) -> None:
    single_file_model(tmp_path / "source")
    store = ModelStore(models_root(tmp_path / "home"))
    import_directory(store, ModelId("tiny-llama"), tmp_path / "source")
    app = FastAPI()
    app.include_router(store_router(store, lambda: [ModelId("tiny-llama"), ModelId("elsewhere")]))
    guarded = ApiKeyGuard(app, (b"secret",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://gateway") as http:
        reply = await http.get("/v1/cluster/models")
    assert reply.status_code == 200
    [elsewhere, tiny] = reply.json()["data"]
    assert elsewhere == {"id": "elsewhere", "served": True, "card_available": False}
    assert tiny["id"] == "tiny-llama" and tiny["served"] is True and tiny["card_available"] is True
    assert tiny["architecture"] == "llama" and tiny["num_layers"] > 0 and tiny["bytes"] > 0
