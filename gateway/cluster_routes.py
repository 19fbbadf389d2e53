"""The gateway's read-only cluster view over HTTP: `GET /v1/cluster` and the `GET /v1/cluster/events` stream.

- `GET /v1/cluster`: `{"status": status_document(GetState reply), "activity": {instance id: {...}}}`,
  the same document `strata status --json` prints, plus this gateway's requests in flight and
  tokens/s per instance. 503 `cluster_unavailable` when the coordinator does not answer.
- `GET /v1/cluster/events`: server-sent events. First `state` (the `/v1/cluster` document), then one
  `committed` per committed event (`index`, `kind`, a one-line `summary`, the `event` JSON and the
  `status` document after it), and `activity` every second (which also keeps idle proxies open).
  The stream ends when the client goes. The status document is fetched once per batch of events that
  arrive together and shared by them (a burst of placements costs one GetState, not one each).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.cluster_view import ClusterUnavailableError
from gateway.instance_activity import InstanceActivity
from services.cluster.event_follower import FollowedChange
from services.cluster.event_summary import summarize_event
from services.wire.cluster_status import status_document
from strata_wire import coordinator_pb2

ACTIVITY_INTERVAL_SECONDS = 1.0


class ClusterSource(Protocol):
    def subscribe(self) -> AbstractAsyncContextManager[asyncio.Queue[FollowedChange]]: ...

    async def fetch_status(self) -> coordinator_pb2.ClusterState: ...


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def cluster_router(
    source: ClusterSource, activity: InstanceActivity, *, activity_interval_seconds: float = ACTIVITY_INTERVAL_SECONDS
) -> APIRouter:
    router = APIRouter()

    async def status_or_none() -> dict[str, object] | None:
        try:
            return status_document(await source.fetch_status())
        except ClusterUnavailableError:
            return None  # the stream goes on; the page keeps its last document

    @router.get("/v1/cluster")
    async def cluster() -> JSONResponse:
        document = status_document(await source.fetch_status())
        return JSONResponse({"status": document, "activity": activity.snapshot_document()})

    async def events(request: Request) -> AsyncIterator[bytes]:
        async with source.subscribe() as changes:
            yield _sse("state", {"status": await status_or_none(), "activity": activity.snapshot_document()})
            while not await request.is_disconnected():
                try:
                    first = await asyncio.wait_for(changes.get(), activity_interval_seconds)
                except TimeoutError:
                    yield _sse("activity", activity.snapshot_document())
                    continue
                batch = [first]
                while not changes.empty():
                    batch.append(changes.get_nowait())
                status = await status_or_none()
                for change in batch:
                    if change.record is None:  # a snapshot: the subscriber missed changes
                        yield _sse("state", {"status": status, "activity": activity.snapshot_document()})
                        continue
                    event = change.record.event
                    yield _sse(
                        "committed",
                        {
                            "index": change.record.index,
                            "kind": event.kind,
                            "summary": summarize_event(event),
                            "event": event.model_dump(mode="json"),
                            "status": status,
                        },
                    )

    @router.get("/v1/cluster/events")
    async def cluster_events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            events(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router
