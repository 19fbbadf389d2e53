"""The cluster routes and the dashboard's files, in memory, over a real `EventFollower` fed by hand.

The follower is the gateway's own (the coordinator's stream replaced by `take`); the status is a real
`GetState` reply message. The event stream is driven as raw ASGI on the test's loop, so the test
decides when the client goes.
"""

import asyncio
import json
from contextlib import AbstractAsyncContextManager

import pytest
from fastapi import FastAPI
from starlette.types import Message, Scope

from gateway.api_keys import ApiKeyGuard, is_open_read
from gateway.app import create_app
from gateway.cluster_view import ClusterUnavailableError
from gateway.completion_engine import CompletionEngine
from gateway.instance_activity import InstanceActivity
from gateway.tokenization import ModelTokenizer
from services.cluster.event_follower import EventFollower, FollowedChange
from services.cluster.events import IndexedEvent, ShardLeaseExpired, ShardRegistered
from services.cluster.state import RegisteredShard
from services.kernel.ids import InstanceId, NodeId, ShardId
from services.wire.cluster_status import status_document
from strata_wire import coordinator_pb2
from tests.gateway.fakes import MODEL, StaticCatalog, StaticTokenizers, scripted_source
from tests.gateway.harness import in_memory_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(30)]


class HandFedCluster:
    def __init__(self) -> None:
        self.follower = EventFollower([])
        self.reply: coordinator_pb2.ClusterState | None = coordinator_pb2.ClusterState(
            term=3, last_index=7, leader="127.0.0.1:1", model_ids=["tiny-chat"]
        )

    def subscribe(self) -> AbstractAsyncContextManager[asyncio.Queue[FollowedChange]]:
        return self.follower.subscribe()

    async def fetch_status(self) -> coordinator_pb2.ClusterState:
        if self.reply is None:
            raise ClusterUnavailableError("No coordinator is known yet (discovery has found none).")
        return self.reply


def build(tokenizer: ModelTokenizer, cluster: HandFedCluster, activity: InstanceActivity) -> FastAPI:
    engine = CompletionEngine(scripted_source(tokenizer), StaticTokenizers({MODEL: tokenizer}))
    return create_app(engine, StaticCatalog(models=[MODEL], ready={MODEL}), cluster=cluster, activity=activity)


def registered(index: int, shard: str) -> coordinator_pb2.WatchedEvent:
    event = ShardRegistered(
        shard=RegisteredShard(
            shard_id=ShardId(shard),
            node_id=NodeId("node-a"),
            address="127.0.0.1:9",
            available_memory_bytes=2**30,
            device="cpu",
        )
    )
    return coordinator_pb2.WatchedEvent(
        index=index, record_json=IndexedEvent(index=index, event=event).model_dump_json().encode()
    )


async def test_cluster_is_the_status_document_and_the_activity(model_tokenizer: ModelTokenizer) -> None:
    cluster, activity = HandFedCluster(), InstanceActivity(clock=lambda: 100.0)
    activity.request_started(InstanceId("i-1"))
    activity.tokens_streamed(InstanceId("i-1"), 10)
    assert cluster.reply is not None
    async with in_memory_client(build(model_tokenizer, cluster, activity)) as client:
        response = await client.get("/v1/cluster")
    assert response.status_code == 200
    assert response.json() == {
        "status": status_document(cluster.reply),
        "activity": {"i-1": {"requests_in_flight": 1, "tokens_per_second": 2.0, "total_tokens": 10}},
    }


async def test_cluster_without_a_coordinator_is_an_openai_503(model_tokenizer: ModelTokenizer) -> None:
    cluster = HandFedCluster()
    cluster.reply = None
    async with in_memory_client(build(model_tokenizer, cluster, InstanceActivity())) as client:
        response = await client.get("/v1/cluster")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "cluster_unavailable"
    assert response.headers["retry-after"]


def parse_events(body: bytes) -> list[tuple[str, dict[str, object]]]:
    parsed: list[tuple[str, dict[str, object]]] = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


async def test_events_stream_state_then_each_committed_event_then_ends(model_tokenizer: ModelTokenizer) -> None:
    cluster = HandFedCluster()
    app = build(model_tokenizer, cluster, InstanceActivity())
    body = bytearray()
    started = asyncio.Event()
    all_committed = asyncio.Event()
    client_gone = asyncio.Event()

    async def receive() -> Message:
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        if message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            body.extend(chunk)
            if b"event: state" in body:
                started.set()
            if body.count(b"event: committed") == 3:
                all_committed.set()

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/v1/cluster/events",
        "raw_path": b"/v1/cluster/events",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    serving = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(started.wait(), 10)
    assert cluster.follower.take(registered(1, "shard-a"))
    assert cluster.follower.take(registered(2, "shard-b"))
    lease = ShardLeaseExpired(shard_id=ShardId("shard-a"))
    record = IndexedEvent(index=3, event=lease)
    assert cluster.follower.take(coordinator_pb2.WatchedEvent(index=3, record_json=record.model_dump_json().encode()))
    await asyncio.wait_for(all_committed.wait(), 10)
    client_gone.set()
    await asyncio.wait_for(serving, 10)  # ends once the client is gone

    events = parse_events(bytes(body))
    assert events[0][0] == "state"
    committed = [data for name, data in events if name == "committed"]
    assert [data["index"] for data in committed] == [1, 2, 3]
    assert [data["kind"] for data in committed] == ["shard_registered", "shard_registered", "shard_lease_expired"]
    assert committed[2]["summary"] == (
        "shard server shard-a went silent: it left the cluster and its instances are re-placed"
    )
    assert committed[0]["event"] == json.loads(registered(1, "shard-a").record_json)["event"]
    assert cluster.reply is not None
    assert all(data["status"] == status_document(cluster.reply) for data in committed)


async def test_the_dashboard_files_are_served(model_tokenizer: ModelTokenizer) -> None:
    async with in_memory_client(build(model_tokenizer, HandFedCluster(), InstanceActivity())) as client:
        index = await client.get("/")
        script = await client.get("/dashboard/dashboard.js")
        style = await client.get("/dashboard/dashboard.css")
        missing = await client.get("/dashboard/../../pyproject.toml")
        unknown = await client.get("/dashboard/secrets.txt")
    assert index.status_code == 200 and "/v1/cluster/events" in script.text and "EventSource" in script.text
    assert index.headers["content-type"].startswith("text/html")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"


async def test_with_api_keys_the_cluster_view_is_open_and_the_rest_is_not(model_tokenizer: ModelTokenizer) -> None:
    app = ApiKeyGuard(build(model_tokenizer, HandFedCluster(), InstanceActivity()), (b"secret",))
    async with in_memory_client(app) as client:  # pyright: ignore[reportArgumentType]
        assert (await client.get("/v1/cluster")).status_code == 200
        assert (await client.get("/")).status_code == 200
        refused = await client.post("/v1/cluster/models/x/serve", json={"instances": 1})
        models = await client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert models.status_code == 401


def test_which_paths_are_open_reads() -> None:
    assert is_open_read("GET", "/v1/cluster") and is_open_read("HEAD", "/v1/cluster/events")
    assert is_open_read("GET", "/v1/cluster/models") and is_open_read("GET", "/v1/cluster/pulls")
    assert is_open_read("GET", "/v1/cluster/models/org/model/preview")
    assert not is_open_read("POST", "/v1/cluster/models/pull")
    assert not is_open_read("POST", "/v1/cluster/models/x/serve")
    assert not is_open_read("GET", "/v1/chat/completions") and not is_open_read("GET", "/v1/models")


async def test_a_subscriber_that_falls_behind_gets_one_snapshot() -> None:
    follower = EventFollower([])
    async with follower.subscribe() as changes:
        for index in range(1, 1026):
            assert follower.take(registered(index, f"shard-{index}"))
        assert changes.qsize() == 1
        change = changes.get_nowait()
    assert change.record is None and change.state.last_index == 1025
