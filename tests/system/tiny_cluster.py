"""A small real cluster for system tests: a coordinator, N shard servers and a gateway, as separate
processes, over a tiny random-weight llama with a small real tokenizer; and the four concurrent
streams (2 greedy, 2 seeded) the failure tests run through the real openai client.
"""

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from strata_wire import coordinator_pb2
from tests.coordinator.replica_processes import get_state
from tests.gateway.tiny_tokenizer import build_model_directory
from tests.processes import (
    ServiceProcess,
    free_port,
    start_coordinator,
    start_strata,
    wait_for_grpc_health,
    wait_for_http_ok,
)
from tests.tiny_architectures import build_tiny_model

MODEL = "tiny-llama"
PREFILL_STEP_SIZE = 4
CONTEXT_LENGTH = 4096
MAX_TOKENS = 600
"""Long enough that all four streams are still running when the shard dies."""
TOKENS_BEFORE_KILL = 8
REQUESTS: tuple[tuple[str, float, int | None], ...] = (
    ("Hello world! The quick brown fox", 0.0, None),
    ("The capital of France is", 0.0, None),
    ("Hello there, how are you today?", 0.8, 1234),
    ("naïve café, über straße", 0.9, 99),
)
"""(user message, temperature, seed) of the four concurrent streams."""


@dataclass
class Cluster:
    coordinator: str
    gateway_url: str
    shards: dict[str, ServiceProcess]
    """By address."""
    processes: list[ServiceProcess]

    def logs(self) -> str:
        return "\n".join(f"--- {process.name}\n{process.log_tail(40)}" for process in self.processes)


def model_home(home: Path, scratch: Path) -> Path:
    model_dir = ModelStore(models_root(home)).model_dir(ModelId(MODEL))
    build_tiny_model("llama", model_dir)
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = CONTEXT_LENGTH  # RoPE: the weights do not depend on it
    config_path.write_text(json.dumps(config))
    tokenizer_dir = build_model_directory(scratch / "tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, model_dir / name)
    return home


@contextmanager
def tiny_cluster(tmp_path: Path, shard_count: int, coordinator_arguments: Sequence[str] = ()) -> Generator[Cluster]:
    """Started and healthy; the coordinator waits for every shard before placing (`--min-shards`)."""
    home = model_home(tmp_path / "home", tmp_path)
    logs = tmp_path / "logs"
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes,
            home,
            logs,
            ["--model", MODEL, "--prefill-step-size", str(PREFILL_STEP_SIZE), "--compute-dtype", "stored",
             "--min-shards", str(shard_count), *coordinator_arguments],
        )  # fmt: skip
        shards: dict[str, ServiceProcess] = {}
        for index in range(shard_count):
            port = free_port()
            arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
            shards[f"127.0.0.1:{port}"] = start_strata(f"shard-{index}", arguments, home, logs)
            processes.append(shards[f"127.0.0.1:{port}"])
        for address, shard in shards.items():
            wait_for_grpc_health(shard, address)
        gateway_port = free_port()
        gateway = start_strata(
            "gateway",
            ["gateway", "--no-mdns", "--port", str(gateway_port), "--coordinator", coordinator],
            home,
            logs,
        )
        processes.append(gateway)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_for_http_ok(gateway, f"{gateway_url}/health", timeout_seconds=120)
        yield Cluster(coordinator, gateway_url, shards, processes)
    finally:
        for process in processes:
            process.stop()


def ready_instance(
    cluster: Cluster, stages: int, other_than: str, timeout_seconds: float
) -> coordinator_pb2.ModelInstance:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = get_state(cluster.coordinator)
        instances = list(state.instances) if state is not None else []
        for instance in instances:
            if instance.status == "ready" and len(instance.stages) == stages and instance.instance_id != other_than:
                return instance
        time.sleep(0.2)
    raise TimeoutError(f"no ready instance over {stages} shards within {timeout_seconds} s:\n{cluster.logs()}")


def stream(
    cluster: Cluster, message: str, temperature: float, seed: int | None, progress: list[int], index: int
) -> str:
    client = OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=150)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        max_tokens=MAX_TOKENS,
        temperature=temperature,
        seed=seed,
        stream=True,
    )
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            progress[index] += 1
    return text


def run_all(cluster: Cluster, kill_at: tuple[list[int], threading.Event] | None = None) -> tuple[list[str], list[int]]:
    """The four requests at once; returns their texts and chunk counts.

    `kill_at` (chunk counts of an undisturbed run, event): the event is set once the leading stream
    is a third of the way through, while every stream still runs.
    """
    progress = [0] * len(REQUESTS)
    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        futures = [
            pool.submit(stream, cluster, message, temperature, seed, progress, index)
            for index, (message, temperature, seed) in enumerate(REQUESTS)
        ]
        if kill_at is not None:
            totals, event = kill_at
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and all(
                3 * count < total for count, total in zip(progress, totals, strict=True)
            ):
                time.sleep(0.002)
            assert not any(future.done() for future in futures), f"a stream ended before the kill: {progress}"
            event.set()
        texts = [future.result(timeout=240) for future in futures]
    return texts, progress


def run_all_killing(cluster: Cluster, victim: ServiceProcess, chunk_counts: list[int]) -> list[str]:
    """The four requests again, `kill -9` of `victim` (by its pid) while all of them stream; their texts."""
    started = threading.Event()
    killed_at: list[float] = []

    def kill_when_streaming() -> None:
        started.wait(timeout=120)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_when_streaming)
    killer.start()
    disturbed, _ = run_all(cluster, kill_at=(chunk_counts, started))
    killer.join(timeout=10)
    assert killed_at, "the shard was killed"
    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    return disturbed
