"""Ollama's `POST /api/pull` over strata's pulls: `{"model": NAME, "stream"?: true}` (or `"name"`).

NAME is a Hub repository: `OWNER/NAME`, `OWNER/NAME@REVISION`, or Ollama's Hugging Face form
`hf.co/OWNER/NAME[:TAG]` (`:latest` is the main branch; another tag is a revision). The pull is the one
`POST /v1/cluster/models/pull` starts (gateway/pull_routes.py), so it needs the same key.

Streamed (the default) as Ollama's NDJSON progress lines: `{"status": "pulling manifest"}`; then for
each weight file `{"status": "pulling <first 12 of its sha256>", "digest": "sha256:...", "total",
"completed"}` as its bytes arrive; `{"status": "verifying sha256 digest"}`, `{"status": "writing
manifest"}` while it is imported, and `{"status": "success"}`. A pull that fails after the stream
started ends with `{"error": "..."}`. With `"stream": false`, one `{"status": "success"}` once done.
Refusals before the start are `{"error": "..."}` with the status of `/v1/cluster/models/pull`.
"""

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from gateway.cluster_view import ClusterUnavailableError
from gateway.dialect_replies import ClosingStreamingResponse
from gateway.pull_routes import MAX_BODY_BYTES, PullClient
from gateway.request_body import decode_json_body
from strata_wire import coordinator_pb2

FOLLOW_SECONDS = 0.5
LOST_AFTER_SECONDS = 30.0
"""A pull the coordinator stops reporting (a new leader, say) for this long ends the stream with an error."""
_HUB_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/")


class OllamaPullBody(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    model: str | None = None
    name: str | None = None
    """The field's old name, which Ollama still accepts."""
    stream: bool = True
    insecure: bool = False


def hub_reference(name: str) -> str:
    """An Ollama model name as strata's `OWNER/NAME[@REVISION]`."""
    for prefix in _HUB_PREFIXES:
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            repository, _, tag = name.partition(":")
            return repository if tag in ("", "latest") else f"{repository}@{tag}"
    return name


def _line(document: dict[str, object]) -> str:
    return json.dumps(document) + "\n"


class PullFollower:
    """The progress lines of one pull, read from the coordinator's state until the pull ends."""

    def __init__(self, client: PullClient, started: coordinator_pb2.ModelPull) -> None:
        self._client = client
        self._pull = started
        self._reported: dict[str, int] = {}
        self._importing_told = False

    async def lines(self) -> AsyncGenerator[str]:
        yield _line({"status": "pulling manifest"})
        last_seen = time.monotonic()
        while True:
            for line in self._progress_lines(self._pull):
                yield line
            if self._pull.state == "done":
                yield _line({"status": "success"})
                return
            if self._pull.state == "failed":
                yield _line({"error": self._pull.error or "the pull failed"})
                return
            await asyncio.sleep(FOLLOW_SECONDS)
            try:
                current = [pull for pull in await self._client.pulls() if pull.pull_id == self._pull.pull_id]
            except ClusterUnavailableError:
                current = []
            if current:
                self._pull, last_seen = current[0], time.monotonic()
            elif time.monotonic() - last_seen > LOST_AFTER_SECONDS:
                yield _line({"error": "the coordinator no longer reports this pull"})
                return

    def _progress_lines(self, pull: coordinator_pb2.ModelPull) -> list[str]:
        lines: list[str] = []
        for file in pull.files:
            if not file.sha256:
                continue  # config and tokenizer files: Ollama's manifest, not a layer
            completed = file.bytes_total if pull.state == "done" else file.bytes_done
            if self._reported.get(file.name) == completed:
                continue
            self._reported[file.name] = completed
            lines.append(
                _line(
                    {
                        "status": f"pulling {file.sha256[:12]}",
                        "digest": f"sha256:{file.sha256}",
                        "total": file.bytes_total,
                        "completed": completed,
                    }
                )
            )
        if pull.state in ("importing", "done") and not self._importing_told:
            self._importing_told = True
            lines += [_line({"status": "verifying sha256 digest"}), _line({"status": "writing manifest"})]
        return lines


def ollama_pull_router(client: PullClient, require_key: Callable[[Request], None]) -> APIRouter:
    router = APIRouter()

    @router.post("/api/pull", dependencies=[Depends(require_key)])
    async def pull(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        body = await decode_json_body(request, OllamaPullBody, MAX_BODY_BYTES)
        name = body.model or body.name
        if not name:
            raise HTTPException(400, "model is required")
        started = await client.start(hub_reference(name), None, replace=False)
        follower = PullFollower(client, started)
        if body.stream:
            return ClosingStreamingResponse(follower.lines(), media_type="application/x-ndjson", headers={})
        last: dict[str, object] = {}
        async for line in follower.lines():
            last = json.loads(line)
        if "error" in last:
            return Response(_line(last), status_code=500, media_type="application/json")
        return Response(_line({"status": "success"}), media_type="application/json")

    return router
