"""`strata models pull --lazy` on a real cluster: a coordinator whose store has no weights, two shard
servers on homes of their own reading only their stage's tensors from a fake Hub (a real HTTP server)
by range requests, greedy output equal to plain mlx-lm, the bytes in `strata status`; and a model too
large for the cluster refused at pull time unless --force."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_files import read_weight_map, weight_files_for_stage
from services.models.model_store import ModelStore
from strata_wire import coordinator_pb2, shard_pb2
from tests.processes import (
    ServiceProcess,
    cluster_state,
    free_port,
    start_coordinator,
    start_strata,
    stopping,
    wait_for_grpc_health,
)
from tests.ring_client import generate_tokens, reference_tokens, shard_stats
from tests.services.fake_hub import FakeHub, fake_hub
from tests.services.hub_repositories import HUB_FILES, SHARDED_REPO, sharded_hub_repository, tensor_ranges

pytestmark = [pytest.mark.process, pytest.mark.model]

MODEL = ModelId("tiny-llama-sharded")
LONG_REPO = "TinyOrg/Tiny-Llama-Long"
PREFILL_STEP_SIZE = 4
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


def _strata_pull(hub: FakeHub, home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-m", "services.app.cli", "models", "pull", *arguments, "--home", str(home)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=environment)


def _ready_instance(coordinator: str, timeout_seconds: float) -> coordinator_pb2.ModelInstance:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        ready = [instance for instance in cluster_state(coordinator).instances if instance.status == "ready"]
        if ready and len(ready[0].stages) == 2:
            return ready[0]
        time.sleep(0.3)
    raise TimeoutError(f"no ready instance over 2 shards within {timeout_seconds} s")


def _registered_fetches(coordinator: str, timeout_seconds: float) -> dict[str, coordinator_pb2.ShardServerInfo]:
    """The shard servers by address, once each registered what it fetched (registration: every 2 s)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        shards = {shard.address: shard for shard in cluster_state(coordinator).shards}
        if len(shards) == 2 and all(shard.fetched_bytes_from_hub for shard in shards.values()):
            return shards
        if time.monotonic() > deadline:
            raise TimeoutError(f"the shards did not register their fetched bytes: {shards}")
        time.sleep(0.3)


def _closed_ranges(hub: FakeHub) -> int:
    total = 0
    with hub.lock:
        ranges = list(hub.ranges)
    for _, header in ranges:
        start, _, end = header.removeprefix("bytes=").partition("-")
        assert end, f"an open range ({header}): a shard read a file to its end"
        total += int(end) - int(start) + 1
    return total


def _long_context_repository(tmp_path: Path) -> None:
    """The same tiny weights with a context so long that its KV cache fits no shard server."""
    shutil.copytree(tmp_path / "hub" / SHARDED_REPO, tmp_path / "hub" / LONG_REPO)
    config_path = tmp_path / "hub" / LONG_REPO / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "max_position_embeddings": 2**30}))


def _start_cluster(
    processes: list[ServiceProcess], hub: FakeHub, coordinator_home: Path, homes: list[Path], logs: Path
) -> tuple[str, list[str]]:
    """The coordinator (on the home that pulled) and a shard server per home; their addresses."""
    coordinator = start_coordinator(
        processes,
        coordinator_home,
        logs,
        ["--model", MODEL, "--min-shards", "2", "--compute-dtype", "stored",
         "--prefill-step-size", str(PREFILL_STEP_SIZE)],
    )  # fmt: skip
    addresses: list[str] = []
    for index, home in enumerate(homes):
        port = free_port()
        arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
        processes.append(
            start_strata(
                f"shard-{index}",
                arguments,
                home,
                logs,
                extra_environment={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
            )
        )
        addresses.append(f"127.0.0.1:{port}")
    for process, address in zip(processes[1:], addresses, strict=True):
        wait_for_grpc_health(process, address)
    return coordinator, addresses


def _assert_fetched_only_its_stage(
    tmp_path: Path,
    store: ModelStore,
    home: Path,
    stage: coordinator_pb2.Stage,
    shard: coordinator_pb2.ShardServerInfo,
    stats: shard_pb2.ShardStats,
) -> None:
    """From the Hub exactly its tensors' bytes (by the Hub files' headers); from the coordinator's store
    the metadata; in its store exactly its stage's weight files."""
    model_dir = store.model_dir(MODEL)
    weight_map = read_weight_map(model_dir)
    hub_files = [tmp_path / "hub" / SHARDED_REPO / name for name in HUB_FILES]
    ranges = {key: span for path in hub_files for key, span in tensor_ranges(path).items()}
    names = {path.name for path in weight_files_for_stage(model_dir, stage.start_layer, stage.end_layer)}
    expected = sum(high - low for key, (low, high) in ranges.items() if weight_map[key] in names)
    metadata_bytes = sum(path.stat().st_size for path in model_dir.iterdir())  # config, index, manifest, tokenizer
    assert (shard.fetched_bytes_from_hub, shard.fetched_bytes_from_peers) == (expected, metadata_bytes), stage
    assert (stats.fetched_bytes_from_hub, stats.fetched_bytes_from_peers) == (expected, metadata_bytes)
    stored = {path.name for path in ModelStore(models_root(home)).model_dir(MODEL).glob("*.safetensors")}
    assert stored == names


@pytest.mark.timeout(600)
def test_each_shard_reads_only_its_stage_from_the_hub(tmp_path: Path) -> None:
    layered = sharded_hub_repository(tmp_path)
    _long_context_repository(tmp_path)
    coordinator_home, logs = tmp_path / "coordinator-home", tmp_path / "logs"
    homes = [tmp_path / "shard-home-0", tmp_path / "shard-home-1"]
    processes: list[ServiceProcess] = []
    with fake_hub(tmp_path / "hub") as hub, stopping(processes):
        nobody = f"127.0.0.1:{free_port()}"
        pulled = _strata_pull(hub, coordinator_home, SHARDED_REPO, "--lazy", "--coordinator", nobody)
        assert pulled.returncode == 0, pulled.stderr
        assert f"could not ask the coordinator at {nobody}" in pulled.stderr  # no cluster yet: not a refusal
        store = ModelStore(models_root(coordinator_home))
        assert not list(store.model_dir(MODEL).glob("*.safetensors"))
        with hub.lock:
            hub.ranges.clear()
            hub.requests.clear()

        coordinator, addresses = _start_cluster(processes, hub, coordinator_home, homes, logs)
        instance = _ready_instance(coordinator, timeout_seconds=240)
        shards = _registered_fetches(coordinator, timeout_seconds=30)
        hub_bytes_read = _closed_ranges(hub)
        weight_gets = [path for verb, path in hub.requests if verb == "GET" and path.endswith(HUB_FILES)]
        weight_ranges = [spec for name, spec in hub.ranges if name in HUB_FILES]
        tokens, _ = generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, max_tokens=12)
        stats = {address: shard_stats(address) for address in addresses}
        status = subprocess.run(
            [sys.executable, "-m", "services.app.cli", "status", "--coordinator", coordinator],
            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip

        # Too large for the cluster: refused before any weight is read, unless --force.
        with hub.lock:
            hub.requests.clear()
        too_large = _strata_pull(hub, coordinator_home, LONG_REPO, "--lazy", "--coordinator", coordinator)
        weight_reads = [path for verb, path in hub.requests if verb == "GET" and path.endswith(HUB_FILES)]
        forced = _strata_pull(hub, coordinator_home, LONG_REPO, "--lazy", "--coordinator", coordinator, "--force")

    for stage in instance.stages:
        home = homes[addresses.index(stage.address)]
        _assert_fetched_only_its_stage(tmp_path, store, home, stage, shards[stage.address], stats[stage.address])
    assert hub_bytes_read == sum(shard.fetched_bytes_from_hub for shard in shards.values())
    assert hub_bytes_read < sum((tmp_path / "hub" / SHARDED_REPO / name).stat().st_size for name in HUB_FILES)
    assert weight_gets and len(weight_gets) == len(weight_ranges)  # every GET of a weight file was a range
    assert tokens == reference_tokens(layered, PROMPT, 12, PREFILL_STEP_SIZE)
    assert status.returncode == 0, status.stderr
    assert "FETCHED MiB (peers / hub)" in status.stdout

    assert too_large.returncode == 3, too_large.stderr
    assert "does not fit the cluster's memory" in too_large.stderr and "bytes" in too_large.stderr
    assert "--force pulls it anyway" in too_large.stderr
    assert len(weight_reads) == 2 * len(HUB_FILES)  # each file: its length and its header, no weight
    assert forced.returncode == 0, forced.stderr
    assert "pulling anyway (--force)" in forced.stderr
    assert store.has_model(ModelId("tiny-llama-long"))
