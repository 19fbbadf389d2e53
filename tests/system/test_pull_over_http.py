"""Pulling a model over HTTP on a real `strata run` (the embedded SmolLM2 over two shard servers) whose
processes get `HF_ENDPOINT` of a fake Hub (tests/services/fake_hub.py, a real HTTP server): refusals
with and without a key, a pull followed to the end in `/v1/cluster/pulls`, `/v1/cluster` and `strata
status`, Ollama's `/api/pull` through the official client, and the dashboard in Chromium pulling,
unserving and serving.

The cluster's home has a store of its own (the embedded model linked in), so pulled models never
reach the store other tests share.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from services.app.benchmark.event_latency import event_latency_lines, measure_event_latency
from services.kernel.settings import models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.wire.cluster_status import status_document
from tests.fixtures import require_debian_program
from tests.processes import (
    SESSION_CLUSTER_TOKEN,
    ServiceProcess,
    cluster_state,
    free_port,
    start_strata,
    wait_for_http_ok,
)
from tests.services.fake_hub import GATED_MARKER, FakeHub, fake_hub
from tests.services.test_models_pull import WEIGHTS, _hub_repository  # pyright: ignore[reportPrivateUsage]

pytestmark = [pytest.mark.process, pytest.mark.model]

REPO = "TinyOrg/Tiny-Llama-Chat"
OLLAMA_REPO = "TinyOrg/Tiny-Llama-Ollama"
BROWSER_REPO = "TinyOrg/Tiny-Llama-Browser"
CORRUPT_REPO = "TinyOrg/Tiny-Llama-Corrupt"
CORRUPT_OLLAMA_REPO = "TinyOrg/Tiny-Llama-Corrupt-Ollama"
SLOW_REPO = "TinyOrg/Tiny-Llama-Slow"
KEY = {"Authorization": f"Bearer {SESSION_CLUSTER_TOKEN}"}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGUMENTS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync"]


@dataclass(frozen=True)
class PullCluster:
    home: Path
    process: ServiceProcess
    url: str
    coordinator_address: str
    hub: FakeHub


@pytest.fixture(scope="module")
def pull_cluster(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PullCluster]:
    repositories = tmp_path_factory.mktemp("hub-build")
    source = _hub_repository(repositories, REPO)
    hub_root = source.parents[1]
    for name in (OLLAMA_REPO, BROWSER_REPO, CORRUPT_REPO, CORRUPT_OLLAMA_REPO, SLOW_REPO):
        shutil.copytree(source, hub_root / name)
    unsupported = hub_root / "TinyOrg/Tiny-Bert"
    shutil.copytree(source, unsupported)
    config = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    shutil.copytree(source, hub_root / "TinyOrg/Gated")
    (hub_root / "TinyOrg/Gated" / GATED_MARKER).touch()
    shutil.copytree(source, hub_root / "TinyOrg/No-Weights")
    (hub_root / "TinyOrg/No-Weights" / WEIGHTS).unlink()

    home = tmp_path_factory.mktemp("pull-home")
    models_root(home).mkdir(parents=True)
    (models_root(home) / EMBEDDED_MODEL_ID).symlink_to(models_root(embedded_home) / EMBEDDED_MODEL_ID)
    with fake_hub(hub_root) as hub:
        gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port(consecutive=2)
        arguments = ["run", "--port", str(gateway_port), "--coordinator-port", str(coordinator_port)]
        arguments += ["--shard-port", str(shard_port), "--metrics-port", "0"]
        environment = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        logs = tmp_path_factory.mktemp("pull-logs")
        process = start_strata("strata-run", arguments, home, logs, extra_environment=environment)
        try:
            url = f"http://127.0.0.1:{gateway_port}"
            wait_for_http_ok(process, f"{url}/health", timeout_seconds=240)
            yield PullCluster(home, process, url, f"127.0.0.1:{coordinator_port}", hub)
        except BaseException:
            print(process.log_tail())
            raise
        finally:
            process.stop()


def _wait_for_pull(client: httpx.Client, pull_id: str, timeout_seconds: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        pulls: list[dict[str, Any]] = client.get("/v1/cluster/pulls").json()["data"]
        [pull] = [pull for pull in pulls if pull["pull_id"] == pull_id]
        if pull["state"] in ("done", "failed"):
            return pull
        time.sleep(0.3)
    raise TimeoutError(f"pull {pull_id} did not end within {timeout_seconds} s")


@pytest.mark.timeout(300)
def test_pull_refusals(pull_cluster: PullCluster) -> None:
    with httpx.Client(base_url=pull_cluster.url, timeout=60.0) as client:
        body = {"repository": REPO}
        refused = client.post("/v1/cluster/models/pull", json=body)
        assert refused.status_code == 401 and "Authorization" in refused.json()["error"]["message"]
        wrong = client.post("/v1/cluster/models/pull", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ollama_refused = client.post("/api/pull", json={"model": REPO})
        assert ollama_refused.status_code == 401 and "error" in ollama_refused.json()

        cases = [
            ({"repo": REPO}, 400, "repository"),
            ({"repository": "not a repository!"}, 400, "invalid repository"),
            ({"repository": f"{REPO}@main", "revision": "main"}, 400, "revision once"),
            ({"repository": "TinyOrg/Nothing-Here"}, 404, "not found"),
            ({"repository": f"{REPO}@v9"}, 404, "revision 'v9' not found"),
            ({"repository": "TinyOrg/Gated"}, 403, "gated"),
            ({"repository": "TinyOrg/Tiny-Bert"}, 422, "bert"),
            ({"repository": "TinyOrg/No-Weights"}, 422, "safetensors"),
        ]
        for sent, status, message in cases:
            reply = client.post("/v1/cluster/models/pull", json=sent, headers=KEY)
            assert reply.status_code == status, (sent, reply.text)
            assert message in reply.json()["error"]["message"], (sent, reply.text)
        assert client.post("/v1/cluster/models/pull", content=b"{", headers=KEY).status_code == 400
        missing = client.post("/api/pull", json={"model": "hf.co/TinyOrg/Nothing-Here:latest"}, headers=KEY)
        assert missing.status_code == 404 and "not found" in missing.json()["error"]
        assert client.post("/api/pull", json={}, headers=KEY).status_code == 400
        # None of them started a pull.
        assert client.get("/v1/cluster/pulls").json()["data"] == []


@pytest.mark.timeout(400)
def test_a_pull_is_followed_to_the_store(pull_cluster: PullCluster) -> None:
    listed = (pull_cluster.hub.root / REPO / WEIGHTS).stat().st_size
    with httpx.Client(base_url=pull_cluster.url, timeout=60.0) as client:
        started = client.post("/v1/cluster/models/pull", json={"repository": REPO}, headers=KEY)
        assert started.status_code == 202, started.text
        pull = started.json()
        assert pull["state"] == "downloading" and pull["model_id"] == "tiny-llama-chat"
        again = client.post("/v1/cluster/models/pull", json={"repository": REPO}, headers=KEY)
        assert again.json()["pull_id"] == pull["pull_id"] or again.json()["state"] == "done"
        ended = _wait_for_pull(client, str(pull["pull_id"]))
        assert ended["state"] == "done", ended
        assert ended["bytes_done"] == ended["bytes_total"] and int(str(ended["bytes_total"])) > listed
        files: dict[str, dict[str, Any]] = {file["name"]: file for file in ended["files"]}
        assert files[WEIGHTS]["bytes_total"] == str(listed)

        models = {model["id"]: model for model in client.get("/v1/cluster/models").json()["data"]}
        assert models["tiny-llama-chat"]["architecture"] == "llama" and models["tiny-llama-chat"]["served"] is False
        # The same pull in GET /v1/cluster, the coordinator's own state and `strata status`.
        cluster = client.get("/v1/cluster").json()["status"]
        assert ended in cluster["pulls"]
        coordinator_pulls = status_document(cluster_state(pull_cluster.coordinator_address))["pulls"]
        assert isinstance(coordinator_pulls, list) and ended in coordinator_pulls
        assert cluster["host_memory"] and int(cluster["host_memory"][0]["total_bytes"]) > 0
        stored_again = client.post("/v1/cluster/models/pull", json={"repository": REPO}, headers=KEY)
        assert stored_again.status_code == 200 and stored_again.json()["state"] == "done"
    table = subprocess.run(
        [sys.executable, "-m", "services.app.cli", "status", "--coordinator", pull_cluster.coordinator_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "downloads" in table and f"{REPO}@main" in table and "USED/FREE GiB" in table


@pytest.mark.timeout(400)
def test_ollama_pull_streams_progress(pull_cluster: PullCluster) -> None:
    weights = (pull_cluster.hub.root / OLLAMA_REPO / WEIGHTS).read_bytes()
    digest = f"sha256:{hashlib.sha256(weights).hexdigest()}"
    client = ollama.Client(host=pull_cluster.url, timeout=300.0, headers=KEY)
    progress = list(client.pull(f"hf.co/{OLLAMA_REPO}:latest", stream=True))
    statuses = [line.status for line in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    layers = [line for line in progress if line.digest == digest]
    assert layers and layers[-1].completed == layers[-1].total == len(weights)
    assert all(line.status == f"pulling {digest[7:19]}" for line in layers)
    # Pulled already: one success, at once.
    assert client.pull(OLLAMA_REPO, stream=False).status == "success"
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("TinyOrg/Gated", stream=False)
    assert refused.value.status_code == 403 and "gated" in refused.value.error


@pytest.mark.timeout(400)
def test_a_pull_that_fails_half_way_says_why(pull_cluster: PullCluster) -> None:
    # Served with its last byte (a weight, past the header the fit check reads) flipped, under its listed sha256.
    size = (pull_cluster.hub.root / CORRUPT_REPO / WEIGHTS).stat().st_size
    pull_cluster.hub.faults.flipped_bytes[WEIGHTS] = size - 1
    try:
        with httpx.Client(base_url=pull_cluster.url, timeout=60.0) as client:
            started = client.post("/v1/cluster/models/pull", json={"repository": CORRUPT_REPO}, headers=KEY)
            assert started.status_code == 202, started.text
            ended = _wait_for_pull(client, started.json()["pull_id"])
            assert ended["state"] == "failed" and "is corrupted" in ended["error"], ended
            models = [model["id"] for model in client.get("/v1/cluster/models").json()["data"]]
            assert "tiny-llama-corrupt" not in models
        ollama_client = ollama.Client(host=pull_cluster.url, timeout=300.0, headers=KEY)
        with pytest.raises(ollama.ResponseError, match="is corrupted"):
            for _ in ollama_client.pull(CORRUPT_OLLAMA_REPO, stream=True):
                pass
    finally:
        pull_cluster.hub.faults.flipped_bytes.clear()


@pytest.mark.timeout(400)
def test_a_second_pull_of_a_repository_into_another_id_waits(pull_cluster: PullCluster) -> None:
    pull_cluster.hub.faults.slow_seconds = 5.0
    try:
        with httpx.Client(base_url=pull_cluster.url, timeout=60.0) as client:
            started = client.post("/v1/cluster/models/pull", json={"repository": SLOW_REPO}, headers=KEY)
            assert started.status_code == 202, started.text
            other = {"repository": SLOW_REPO, "model_id": "another-id"}
            conflict = client.post("/v1/cluster/models/pull", json=other, headers=KEY)
            assert conflict.status_code == 409 and "in progress" in conflict.json()["error"]["message"]
            assert _wait_for_pull(client, started.json()["pull_id"])["state"] == "done"
    finally:
        pull_cluster.hub.faults.slow_seconds = 0.0


@pytest.mark.timeout(300)
def test_the_benchmarks_event_latency_case(pull_cluster: PullCluster) -> None:
    # `make bench` runs it on its first cluster; here once, briefly, to see it measure.
    latency = measure_event_latency(pull_cluster.url, pull_cluster.coordinator_address, EMBEDDED_MODEL_ID, 1, rounds=5)
    assert latency.rounds == 5 and latency.max_seconds >= latency.median_seconds
    print(event_latency_lines(latency)[2])


@pytest.mark.timeout(600)
def test_the_dashboard_pulls_unserves_and_serves(pull_cluster: PullCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = require_debian_program("chromium", "chromium")
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # see tests/system/test_dashboard.py
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    pull_cluster.hub.faults.slow_seconds = 6.0  # long enough for the page to show a pull under way
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGUMENTS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(pull_cluster.url + "/")
                page.fill("#api-key", SESSION_CLUSTER_TOKEN)
                page.dispatch_event("#api-key", "change")
                host = page.locator(".host .memory-line").first
                expect(host).to_contain_text("GiB used", timeout=60_000)

                page.fill("#pull-repo", BROWSER_REPO)
                page.click("#pull-form button")
                pull_card = page.locator(f'.pull[data-repository="{BROWSER_REPO}"]')
                expect(pull_card).to_contain_text("downloading", timeout=60_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-pulling.png"), full_page=True)
                expect(pull_card).to_contain_text("done", timeout=300_000)
                expect(pull_card.locator(".progress > div")).to_have_attribute("style", "width:100%")
                expect(page.locator('.model[data-model="tiny-llama-browser"]')).to_contain_text("stored")

                served = page.locator(f'.model[data-model="{EMBEDDED_MODEL_ID}"]')
                expect(served).to_contain_text("served", timeout=30_000)
                preview = served.get_by_role("button", name="Preview", exact=True)
                preview.click()
                expect(served.locator(".preview")).to_contain_text("does not fit", timeout=30_000)
                served.get_by_role("button", name="Unserve", exact=True).click()
                expect(served.get_by_role("button", name="Serve", exact=True)).to_be_visible(timeout=60_000)
                expect(page.locator("#event-log li[data-kind='model_unserved']").first).to_be_visible(timeout=60_000)
                expect(page.locator("#event-log li[data-kind='instance_removed']").first).to_be_visible(timeout=60_000)
                preview.click()
                expect(served.locator(".preview")).to_contain_text("[0,", timeout=60_000)
                served.get_by_role("button", name="Serve", exact=True).click()
                expect(served.get_by_role("button", name="Unserve", exact=True)).to_be_visible(timeout=60_000)
                expect(page.locator("#event-log li[data-kind='instance_ready']").first).to_be_visible(timeout=240_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-models.png"), full_page=True)
            finally:
                browser.close()
    finally:
        pull_cluster.hub.faults.slow_seconds = 0.0
    wait_for_http_ok(pull_cluster.process, f"{pull_cluster.url}/health", timeout_seconds=240)
