"""The gateway's serving routes: preview, serve and unserve a model, over the coordinator's RPCs.

- `GET /v1/cluster/models/{model_id}/preview?instances=N`: the preview document (open).
- `POST /v1/cluster/models/{model_id}/serve` body `{"instances": N}` (default 1): 200 with the preview,
  409 when it does not fit (the message says how many bytes are missing).
- `POST /v1/cluster/models/{model_id}/unserve`: 200 `{"model_id", "served": [...]}`.

The mutating routes need a key (gateway/cluster_auth.py). The coordinator's refusals become OpenAI
error JSON: NOT_FOUND 404, RESOURCE_EXHAUSTED 409, INVALID_ARGUMENT 400, unreachable 503.
"""

from collections.abc import Callable

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from services.platform.grpc_server import cluster_channel
from services.wire.serving_preview import preview_document
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

CALL_TIMEOUT_SECONDS = 60.0
MAX_INSTANCES = 64
_STATUS_OF_CODE = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}


class ServeBody(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    instances: int = Field(default=1, ge=1, le=MAX_INSTANCES)


def _refused(error: grpc.aio.AioRpcError) -> HTTPException:
    status = _STATUS_OF_CODE.get(error.code(), 502)
    details = error.details() or error.code().name
    return HTTPException(status, f"coordinator unreachable: {details}" if status == 503 else details)


def model_router(coordinator_address: Callable[[], str | None], require_key: Callable[[Request], None]) -> APIRouter:
    router = APIRouter(prefix="/v1/cluster/models")

    def address() -> str:
        found = coordinator_address()
        if found is None:
            raise HTTPException(503, "no coordinator is known yet; retry later")
        return found

    @router.get("/{model_id:path}/preview")
    async def preview(model_id: str, instances: int = 1) -> JSONResponse:
        if not 1 <= instances <= MAX_INSTANCES:
            raise HTTPException(400, f"instances must be between 1 and {MAX_INSTANCES}")
        request = coordinator_pb2.PreviewServingRequest(model_id=model_id, instances=instances)
        async with cluster_channel(address()) as channel:
            try:
                reply = await coordinator_pb2_grpc.CoordinatorStub(channel).PreviewServing(
                    request, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                raise _refused(error) from error
        return JSONResponse(preview_document(reply))

    @router.post("/{model_id:path}/serve", dependencies=[Depends(require_key)])
    async def serve(model_id: str, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = ServeBody.model_validate_json(raw) if raw.strip() else ServeBody()
        except ValidationError as error:
            raise HTTPException(400, f"invalid body: {error.errors()[0]['msg']}") from error
        command = coordinator_pb2.ServeModelRequest(model_id=model_id, instances=body.instances)
        async with cluster_channel(address()) as channel:
            try:
                reply = await coordinator_pb2_grpc.CoordinatorStub(channel).ServeModel(
                    command, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                raise _refused(error) from error
        return JSONResponse(preview_document(reply))

    @router.post("/{model_id:path}/unserve", dependencies=[Depends(require_key)])
    async def unserve(model_id: str) -> JSONResponse:
        command = coordinator_pb2.UnserveModelRequest(model_id=model_id)
        async with cluster_channel(address()) as channel:
            try:
                reply = await coordinator_pb2_grpc.CoordinatorStub(channel).UnserveModel(
                    command, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as error:
                raise _refused(error) from error
        return JSONResponse({"model_id": model_id, "served": list(reply.model_ids)})

    return router
