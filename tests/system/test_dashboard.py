"""The dashboard over a real `strata run` (2 shard servers, the embedded SmolLM2): `/v1/cluster` is the
coordinator's status document, `/v1/cluster/events` delivers every committed event, and headless
Chromium (Debian's, driven by playwright) sees the shards, chats, and sees a shard's death in the log.

The browser test kills a shard server child of `strata run`; it needs `strata run` to restart its
children (without that the whole cluster stops and the test fails).
"""

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from services.kernel.settings import home_sharing_models
from services.platform.grpc_server import cluster_sync_channel
from services.wire.cluster_status import status_document
from strata_wire import coordinator_pb2, coordinator_pb2_grpc
from tests.fixtures import require_debian_program
from tests.processes import ServiceProcess, child_pids, cluster_state, free_port, start_strata, wait_for_grpc_health
from tests.system.conftest import RunningCluster, serve_local_cluster

pytestmark = [pytest.mark.process, pytest.mark.model]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dashboard_cluster(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A cluster of this module alone: the browser test kills one of its shard servers."""
    with home_sharing_models(embedded_home) as home:
        yield from serve_local_cluster(home, tmp_path_factory.mktemp("dashboard"))


@pytest.mark.timeout(120)
def test_cluster_is_the_coordinators_status_document(dashboard_cluster: RunningCluster) -> None:
    # The two reads are not atomic: a commit (a lease renewal moves no index, but a log position may)
    # between them differs, so compare until one pair agrees.
    expected: dict[str, object] = {}
    served: dict[str, object] = {}
    for _ in range(20):
        expected = status_document(cluster_state(dashboard_cluster.coordinator_address))
        served = httpx.get(f"{dashboard_cluster.gateway_url}/v1/cluster", timeout=30).json()
        if served["status"] == expected:
            break
        time.sleep(0.5)
    assert served["status"] == expected
    assert isinstance(served["activity"], dict)


class EventCollector:
    """Reads one stream in a thread: (index, kind, monotonic arrival time) of each committed event."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str, float]] = []
        self.opened = threading.Event()
        self.failure: BaseException | None = None


def read_sse(url: str, collector: EventCollector, stop: threading.Event) -> None:
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=5)) as response:
            event_name = ""
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    event_name = line[7:]
                elif line.startswith("data: "):
                    if event_name == "state":
                        collector.opened.set()
                    if event_name == "committed":
                        data = json.loads(line[6:])
                        collector.events.append((data["index"], data["kind"], time.monotonic()))
    except httpx.ReadTimeout:
        if not stop.is_set():
            raise
    except BaseException as error:  # reported by the test, not lost in the thread
        collector.failure = error


def read_watch(address: str, from_index: int, collector: EventCollector, stop: threading.Event) -> None:
    with cluster_sync_channel(address) as channel:
        call = coordinator_pb2_grpc.CoordinatorStub(channel).WatchEvents(
            coordinator_pb2.WatchEventsRequest(from_index=from_index)
        )
        collector.opened.set()
        watcher = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
        watcher.start()
        try:
            for watched in call:
                if watched.record_json:
                    record = json.loads(watched.record_json)
                    collector.events.append((watched.index, record["event"]["kind"], time.monotonic()))
        except grpc.RpcError:
            if not stop.is_set():
                raise


@pytest.mark.timeout(300)
def test_events_delivers_every_committed_event(dashboard_cluster: RunningCluster, tmp_path: Path) -> None:
    start_index = cluster_state(dashboard_cluster.coordinator_address).last_index + 1
    stop = threading.Event()
    sse, watch = EventCollector(), EventCollector()
    threads = [
        threading.Thread(target=read_sse, args=(f"{dashboard_cluster.gateway_url}/v1/cluster/events", sse, stop)),
        threading.Thread(target=read_watch, args=(dashboard_cluster.coordinator_address, start_index, watch, stop)),
    ]
    for thread in threads:
        thread.start()
    extra: ServiceProcess | None = None
    try:
        assert sse.opened.wait(30) and watch.opened.wait(30)
        # A third shard server joins: at least its registration commits (and maybe a re-placement).
        port = free_port()
        arguments = ["shard", "--port", str(port), "--coordinator", dashboard_cluster.coordinator_address]
        extra = start_strata("extra-shard", arguments, dashboard_cluster.home, tmp_path)
        wait_for_grpc_health(extra, f"127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(kind == "shard_registered" for _, kind, _ in sse.events):
            time.sleep(0.2)
        time.sleep(5)  # what the join sets off commits too
        stop.set()
    finally:
        stop.set()
        if extra is not None:
            extra.stop()
        for thread in threads:
            thread.join(30)
    assert sse.failure is None, sse.failure
    last = max(index for index, _, _ in sse.events)
    watched = [(index, kind) for index, kind, _ in watch.events if index <= last]
    delivered = [(index, kind) for index, kind, _ in sse.events if index >= start_index]
    assert delivered == watched and any(kind == "shard_registered" for _, kind in delivered)
    arrival = {index: moment for index, _, moment in watch.events}
    latencies = sorted(moment - arrival[index] for index, _, moment in sse.events if index in arrival)
    print(
        f"committed event -> SSE delivery, after the test's own WatchEvents ({len(latencies)} events): "
        f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )


@pytest.mark.timeout(600)
def test_the_dashboard_in_chromium(dashboard_cluster: RunningCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = require_debian_program("chromium", "chromium")
    # `make test` preloads the BLAS shim into the test process (services/platform/fast_blas.py); the
    # browser and playwright's node driver must not inherit it (node cannot start its threads with it).
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    state = settled_state(dashboard_cluster.coordinator_address)
    [instance] = [instance for instance in state.instances if instance.status == "ready"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGUMENTS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(dashboard_cluster.gateway_url + "/")
            for stage in instance.stages:
                label = f"{stage.shard_id} [{stage.start_layer}, {stage.end_layer})"
                expect(page.locator(f'.stage[data-shard="{stage.shard_id}"]')).to_have_text(label, timeout=30_000)
            for shard in state.shards:
                expect(page.locator(f'.shard[data-shard="{shard.shard_id}"]')).to_be_visible()
            page.fill("#chat-input", "What is the capital of France?")
            page.click("#chat-form button")
            expect(page.locator(".message.assistant").last).not_to_be_empty(timeout=180_000)
            expect(page.locator("#chat-stats")).to_contain_text("tok/s", timeout=180_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})

            # A shard server dies: the log shows the instance leaving and being placed again.
            shard_pids = [pid for pid in child_pids(dashboard_cluster.process.process.pid) if _is_shard(pid)]
            assert len(shard_pids) == 2, shard_pids
            killed_port = _port_of(shard_pids[-1])
            os.kill(shard_pids[-1], signal.SIGKILL)
            # Restarted by `strata run`, it registers again (a new incarnation) and the instance is re-placed.
            registered_again = page.locator("#event-log li[data-kind='shard_registered']", has_text=f":{killed_port} ")
            expect(registered_again.first).to_be_visible(timeout=180_000)
            expect(page.locator("#event-log li[data-kind='instance_placed']").first).to_be_visible(timeout=180_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-after-kill.png"), full_page=True)
        finally:
            browser.close()


def settled_state(address: str) -> coordinator_pb2.ClusterState:
    """The state once exactly the two shard servers of `strata run` remain and an instance is ready
    (the extra shard of the events test leaves when its lease expires)."""
    deadline = time.monotonic() + 180
    while True:
        state = cluster_state(address)
        ready = [instance for instance in state.instances if instance.status == "ready"]
        if len(state.shards) == 2 and len(ready) == 1 and len(ready[0].stages) == 2:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(1)


def _port_of(pid: int) -> str:
    command = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    return command[command.index("--port") + 1]


def _is_shard(pid: int) -> bool:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return b"shard" in command
