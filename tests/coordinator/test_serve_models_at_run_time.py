"""`strata models preview|serve|unserve` over real processes: one coordinator, two shard servers on
two nodes, two tiny random-weight models in the stores (a llama served at start, a qwen3 not).

The qwen3 does not fit while the llama holds both shard servers (refused with the bytes it lacks,
never committed); once the llama is unserved its instance goes, the qwen3 fits, is served, and its
greedy tokens over the real ring equal plain mlx-lm in this process."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from tests.coordinator.replica_processes import get_state
from tests.coordinator.tiny_instance import MODEL, NEW_TOKENS, PREFILL_STEP_SIZE, PROMPT, wait_for_ready_instance
from tests.processes import ServiceProcess, free_port, start_coordinator, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens, reference_tokens
from tests.tiny_architectures import build_tiny_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]

SECOND = "tiny-qwen3"
EXIT_REFUSED, EXIT_DOES_NOT_FIT, EXIT_UNREACHABLE = 1, 3, 4


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


def test_serve_unserve_and_preview_through_the_cli(tmp_path: Path) -> None:
    homes = [tmp_path / f"node-{index}" for index in range(3)]
    for home in homes:
        store = ModelStore(models_root(home))
        build_tiny_model("llama", store.model_dir(ModelId(MODEL)))
        build_tiny_model("qwen3", store.model_dir(ModelId(SECOND)))
    logs = tmp_path / "logs"
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes,
            homes[0],
            logs,
            ["--model", MODEL, "--min-shards", "2", "--prefill-step-size", str(PREFILL_STEP_SIZE),
             "--compute-dtype", "stored"],
        )  # fmt: skip
        for index in (1, 2):
            port = free_port()
            arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
            processes.append(start_strata(f"shard-{index}", arguments, homes[index], logs))
            wait_for_grpc_health(processes[-1], f"127.0.0.1:{port}")
        wait_for_ready_instance(coordinator, avoiding="", timeout_seconds=90, processes=processes)
        home = homes[0]

        refused = _models(home, "preview", SECOND, "--coordinator", coordinator, "--json")
        assert refused.returncode == EXIT_DOES_NOT_FIT, refused.stderr
        document = json.loads(refused.stdout)
        assert document["fits"] is False and document["missing_bytes"] > 0
        assert "bytes are missing" in document["reason"]
        serve_refused = _models(home, "serve", SECOND, "--coordinator", coordinator)
        assert serve_refused.returncode == EXIT_DOES_NOT_FIT
        assert "bytes are missing" in serve_refused.stderr
        state = get_state(coordinator)
        assert state is not None and SECOND not in state.model_ids, "a refused serve must not be committed"

        unknown = _models(home, "serve", "no-such-model", "--coordinator", coordinator)
        assert unknown.returncode == EXIT_REFUSED and "not in the coordinator's model store" in unknown.stderr
        unreachable = _models(home, "unserve", MODEL, "--coordinator", f"127.0.0.1:{free_port()}")
        assert unreachable.returncode == EXIT_UNREACHABLE and "unreachable" in unreachable.stderr

        unserved = _models(home, "unserve", MODEL, "--coordinator", coordinator)
        assert unserved.returncode == 0, unserved.stderr
        _wait_until_no_instance_of(coordinator, MODEL, 60)

        preview = _models(home, "preview", SECOND, "--coordinator", coordinator)
        assert preview.returncode == 0, preview.stderr
        assert "fits" in preview.stdout and "[0," in preview.stdout
        served = _models(home, "serve", SECOND, "--coordinator", coordinator, "--json")
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout)["fits"] is True

        instance = wait_for_ready_instance(coordinator, avoiding="", timeout_seconds=90, processes=processes)
        assert instance.model_id == SECOND
        after = get_state(coordinator)
        assert after is not None and list(after.model_ids) == [SECOND], "--model must not bring the llama back"
        tokens, reason = generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, NEW_TOKENS)
        assert reason == "length"
        assert tokens == reference_tokens(models_root(home) / SECOND, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)

        not_served = _models(home, "unserve", MODEL, "--coordinator", coordinator)
        assert not_served.returncode == EXIT_REFUSED and "is not served" in not_served.stderr
    finally:
        for process in processes:
            process.stop()
