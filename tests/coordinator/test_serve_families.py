"""Families beyond llama and qwen through real processes: one coordinator, two shard servers on two
nodes, and `strata models serve/unserve` switching the cluster from one family to the next.

gemma3 (the wrapper with a nested text config, sliding and global layers, a tied head), gpt_oss
(sliding windows, attention sinks, a mixture of experts) and deepseek_v3 (latent attention, dense
and MoE layers) each run split over the two shards; greedy and seeded tokens, of requests running
at the same time, equal plain mlx-lm in this process. The shards report whether their batches mixed
requests (`batched_layers`): these families' blocks run each request alone, which stays exact.
"""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from tests.coordinator.replica_processes import get_state
from tests.coordinator.tiny_instance import wait_for_ready_instance
from tests.processes import ServiceProcess, free_port, start_coordinator, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens, reference_tokens, shard_stats
from tests.tiny_families import build_family_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

FAMILIES = ("gemma3", "gpt_oss", "deepseek_v3")
PREFILL_STEP_SIZE = 4
PROMPTS = ([3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12], [8, 9, 10, 11, 12])
NEW_TOKENS = 12


def _models(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.app.cli", "models", *arguments, "--home", str(home)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _wait_until_no_instance_of(coordinator: str, model_id: str, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = get_state(coordinator)
        if state is not None and all(instance.model_id != model_id for instance in state.instances):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{model_id} still has an instance after {timeout_seconds}s")


def test_three_families_served_in_turn_each_equal_plain_mlx_lm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = [tmp_path / f"node-{index}" for index in range(3)]
    for home in homes:
        store = ModelStore(models_root(home))
        for family in FAMILIES:
            build_family_model(family, store.model_dir(ModelId(f"tiny-{family}")))
    logs = tmp_path / "logs"
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes,
            homes[0],
            logs,
            ["--model", f"tiny-{FAMILIES[0]}", "--min-shards", "2", "--prefill-step-size", str(PREFILL_STEP_SIZE),
             "--compute-dtype", "stored"],
        )  # fmt: skip
        for index in (1, 2):
            port = free_port()
            arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
            processes.append(start_strata(f"shard-{index}", arguments, homes[index], logs))
            wait_for_grpc_health(processes[-1], f"127.0.0.1:{port}")
        for turn, family in enumerate(FAMILIES):
            model_id = f"tiny-{family}"
            if turn:
                previous = f"tiny-{FAMILIES[turn - 1]}"
                unserved = _models(homes[0], "unserve", previous, "--coordinator", coordinator)
                assert unserved.returncode == 0, unserved.stderr
                _wait_until_no_instance_of(coordinator, previous, 60)
                served = _models(homes[0], "serve", model_id, "--coordinator", coordinator)
                assert served.returncode == 0, served.stderr
            instance = wait_for_ready_instance(coordinator, avoiding="", timeout_seconds=120, processes=processes)
            assert instance.model_id == model_id
            assert len(instance.stages) == 2
            first = instance.stages[0].address
            requests = [(PROMPTS[0], 0.0, 0), (PROMPTS[0], 0.8, 1234), (PROMPTS[1], 1.0, 7)]
            with ThreadPoolExecutor(max_workers=len(requests)) as pool:
                futures = [
                    pool.submit(
                        generate_tokens, first, instance.instance_id, prompt, NEW_TOKENS, temperature, 1.0, seed
                    )
                    for prompt, temperature, seed in requests
                ]
                results = [future.result()[0] for future in futures]
            model_dir = models_root(homes[0]) / model_id
            for (prompt, temperature, seed), tokens in zip(requests, results, strict=True):
                assert tokens == reference_tokens(
                    model_dir, prompt, NEW_TOKENS, PREFILL_STEP_SIZE, temperature, 1.0, seed
                )
            stats = [shard_stats(stage.address) for stage in instance.stages]
            # Their blocks (extra norms, sinks, latent attention) are not of the form the batched path runs.
            assert [stat.batched_layers for stat in stats] == [0, 0]
            assert all(stat.steps > 0 and stat.active_requests == 0 for stat in stats)
            with capsys.disabled():
                mixed = [f"{stat.batched_layers} of {stat.end_layer - stat.start_layer}" for stat in stats]
                print(f"\n{family} over 2 shard processes: layers whose batches mixed requests: {', '.join(mixed)}")
    finally:
        for process in processes:
            process.stop()
