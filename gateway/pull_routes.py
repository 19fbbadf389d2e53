"""The gateway's pull routes: start a pull of a Hub model into the cluster, and list the pulls.

- `POST /v1/cluster/models/pull` body `{"repository": "OWNER/NAME[@REVISION]", "revision"?, "model_id"?,
  "replace"?}`: 202 with the pull (`state: "downloading"`), 200 when the model is stored already
  (`state: "done"`). Needs a key (gateway/cluster_auth.py).
- `GET /v1/cluster/pulls`: `{"object": "list", "data": [pull, ...]}`, in progress first (open).

The coordinator's leader runs the pull into its store (coordinator/model_pulls.py); its refusals
become OpenAI error JSON: INVALID_ARGUMENT 400, PERMISSION_DENIED 403 (gated), NOT_FOUND 404 (repository
or revision), ALREADY_EXISTS 409, FAILED_PRECONDITION 422 (not a model, a family the shards cannot run,
HF_HUB_OFFLINE), unreachable Hub or coordinator 503.
"""

from collections.abc import Callable
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.exceptions import HTTPException

from gateway.cluster_routes import ClusterSource
from gateway.request_body import decode_json_body
from services.platform.grpc_server import cluster_channel
from services.wire.pull_document import pull_document
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

PULL_CALL_TIMEOUT_SECONDS = 120.0
"""The leader asks the Hub for the listing and config.json before it answers."""
MAX_BODY_BYTES = 16 * 1024
_STATUS_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}

Reference = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class PullBody(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    repository: Reference
    revision: Reference | None = None
    model_id: Reference | None = None
    replace: bool = False

    def reference(self) -> str:
        """`repository`, with `@revision` when one is given apart."""
        if self.revision is None:
            return self.repository
        if "@" in self.repository:
            raise HTTPException(400, "give the revision once: in repository (OWNER/NAME@REVISION) or in revision")
        return f"{self.repository}@{self.revision}"


class PullClient:
    """Starts pulls on the coordinator (passed on to its leader) and reads them from its state."""

    def __init__(self, coordinator_address: Callable[[], str | None], cluster: ClusterSource) -> None:
        self._coordinator_address = coordinator_address
        self._cluster = cluster

    async def start(self, reference: str, model_id: str | None, *, replace: bool) -> coordinator_pb2.ModelPull:
        """The pull started (or found in progress); raises HTTPException with the refusal's status."""
        address = self._coordinator_address()
        if address is None:
            raise HTTPException(503, "no coordinator is known yet; retry later")
        request = coordinator_pb2.PullModelRequest(repository=reference, model_id=model_id or "", replace=replace)
        async with cluster_channel(address) as channel:
            try:
                return await coordinator_pb2_grpc.CoordinatorStub(channel).PullModel(
                    request, timeout=PULL_CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                status = _STATUS_OF_CODE.get(error.code(), 502)
                details = error.details() or error.code().name
                raise HTTPException(status, details) from error

    async def pulls(self) -> list[coordinator_pb2.ModelPull]:
        """What the coordinator reports; raises ClusterUnavailableError (503) when it does not answer."""
        return list((await self._cluster.fetch_status()).pulls)


def pull_router(client: PullClient, require_key: Callable[[Request], None]) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/cluster/models/pull", dependencies=[Depends(require_key)])
    async def pull(request: Request) -> JSONResponse:  # pyright: ignore[reportUnusedFunction]
        body = await decode_json_body(request, PullBody, MAX_BODY_BYTES)
        started = await client.start(body.reference(), body.model_id, replace=body.replace)
        return JSONResponse(pull_document(started), status_code=200 if started.state == "done" else 202)

    @router.get("/v1/cluster/pulls")
    async def pulls() -> JSONResponse:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse({"object": "list", "data": [pull_document(pull) for pull in await client.pulls()]})

    return router
