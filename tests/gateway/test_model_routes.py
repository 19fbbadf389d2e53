"""The gateway's serving routes in memory: the key check (API key, else the home's cluster token), bad
input, and a coordinator that does not answer (503), all as OpenAI error JSON. Serving itself over a
real cluster: tests/coordinator/test_serve_models_at_run_time.py."""

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.cluster_auth import cluster_key_check
from gateway.errors import install_error_handlers
from gateway.model_routes import model_router
from services.app.ports import free_port
from services.platform.auth import TOKEN_ENVIRONMENT_VARIABLE

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(30)]

TOKEN = "the-cluster-token"
UNAUTHORIZED, BAD_REQUEST, UNAVAILABLE = 401, 400, 503


def _client(home: Path, api_keys: tuple[bytes, ...] = ()) -> httpx.AsyncClient:
    app = FastAPI()
    install_error_handlers(app)
    nobody = f"127.0.0.1:{free_port()}"  # no coordinator listens there
    app.include_router(model_router(lambda: nobody, cluster_key_check(api_keys, home)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", timeout=20.0)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(TOKEN_ENVIRONMENT_VARIABLE, TOKEN)
    return tmp_path


@pytest.mark.parametrize("route", ["serve", "unserve"])
async def test_a_mutating_route_without_a_key_is_401(home: Path, route: str) -> None:
    async with _client(home) as client:
        reply = await client.post(f"/v1/cluster/models/tiny/{route}", json={})
    assert reply.status_code == UNAUTHORIZED
    assert reply.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in reply.json()["error"]["message"]


async def test_a_wrong_key_is_401(home: Path) -> None:
    async with _client(home) as client:
        reply = await client.post("/v1/cluster/models/tiny/serve", headers={"Authorization": "Bearer nope"})
    assert reply.status_code == UNAUTHORIZED
    assert reply.json()["error"]["message"] == "Incorrect API key or cluster token provided."


async def test_the_cluster_token_passes_and_an_unreachable_coordinator_is_503(home: Path) -> None:
    async with _client(home) as client:
        reply = await client.post(
            "/v1/cluster/models/tiny/serve", json={"instances": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert reply.status_code == UNAVAILABLE
    assert "coordinator unreachable" in reply.json()["error"]["message"]


async def test_with_api_keys_only_an_api_key_passes(home: Path) -> None:
    async with _client(home, api_keys=(b"key-1",)) as client:
        with_token = await client.post("/v1/cluster/models/tiny/unserve", headers={"Authorization": f"Bearer {TOKEN}"})
        with_key = await client.post("/v1/cluster/models/tiny/unserve", headers={"Authorization": "Bearer key-1"})
    assert with_token.status_code == UNAUTHORIZED
    assert with_key.status_code == UNAVAILABLE


async def test_the_preview_is_open_and_checks_instances(home: Path) -> None:
    async with _client(home) as client:
        too_few = await client.get("/v1/cluster/models/tiny/preview", params={"instances": 0})
        unreachable = await client.get("/v1/cluster/models/tiny/preview")
    assert too_few.status_code == BAD_REQUEST
    assert "instances must be between" in too_few.json()["error"]["message"]
    assert unreachable.status_code == UNAVAILABLE


@pytest.mark.parametrize("body", [b'{"instances": 0}', b'{"instances": "2"}', b"not json", b'{"other": 1}'])
async def test_a_bad_serve_body_is_400(home: Path, body: bytes) -> None:
    async with _client(home) as client:
        reply = await client.post(
            "/v1/cluster/models/tiny/serve", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert reply.status_code == BAD_REQUEST
    assert reply.json()["error"]["type"] == "invalid_request_error"
