"""`POST /v1/embeddings` (OpenAI's shape): decode, one engine call, encode; see `gateway.embeddings`."""

from fastapi import APIRouter, Request, Response

from gateway.dialect_replies import client_closed_reply, json_reply, new_request_id, unless_disconnected
from gateway.embeddings import EmbeddingEngine, EmbeddingRequest
from gateway.request_body import DEFAULT_MAX_BODY_BYTES, decode_json_body


def embedding_router(engine: EmbeddingEngine, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/embeddings")
    async def create_embeddings(request: Request) -> Response:
        body = await decode_json_body(request, EmbeddingRequest, max_body_bytes)
        request_id = new_request_id("embd")
        reply = await unless_disconnected(request, request_id, engine.embed(body, request_id))
        return client_closed_reply() if reply is None else json_reply(reply)

    return router
