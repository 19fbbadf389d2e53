"""`strata drain NODE` over real processes: the instance on that node is replaced elsewhere first and
then removed, with no failure on the way; the drained shard server stays registered and the model
serves from the other node. One coordinator replica, two shard servers on two nodes, a tiny llama."""

import subprocess
import sys
from pathlib import Path

import pytest

from services.cluster.events import ShardLeaseExpired, StageFailed
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from tests.coordinator.replica_processes import committed_records, get_state
from tests.coordinator.tiny_instance import (
    MODEL,
    NEW_TOKENS,
    PREFILL_STEP_SIZE,
    PROMPT,
    wait_for_ready_instance,
)
from tests.processes import ServiceProcess, free_port, start_coordinator, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens, reference_tokens
from tests.tiny_architectures import build_tiny_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(240)]


def test_draining_a_node_moves_its_instance_without_a_failure(tmp_path: Path) -> None:
    homes = [tmp_path / f"node-{index}" for index in range(3)]
    for home in homes:
        build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId(MODEL)))
    logs = tmp_path / "logs"
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes,
            homes[0],
            logs,
            ["--model", MODEL, "--prefill-step-size", str(PREFILL_STEP_SIZE), "--compute-dtype", "stored"],
        )
        for index in (1, 2):
            port = free_port()
            arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
            processes.append(start_strata(f"shard-{index}", arguments, homes[index], logs))
            wait_for_grpc_health(processes[-1], f"127.0.0.1:{port}")

        first = wait_for_ready_instance(coordinator, avoiding="", timeout_seconds=90, processes=processes)
        state = get_state(coordinator)
        assert state is not None
        drained_shard = first.stages[-1].shard_id
        drained_node = next(shard.node_id for shard in state.shards if shard.shard_id == drained_shard)

        drain = subprocess.run(
            [sys.executable, "-m", "services.app.cli", "drain", drained_node, "--coordinator", coordinator,
             "--timeout", "120"],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert drain.returncode == 0, drain.stderr
        assert "is drained" in drain.stdout

        second = wait_for_ready_instance(coordinator, drained_shard, 30, processes)
        after = get_state(coordinator)
        assert after is not None
        assert drained_shard in {shard.shard_id for shard in after.shards}, "the drained shard took the failure path"
        assert [instance.instance_id for instance in after.instances] == [second.instance_id]
        events = [record.event for record in committed_records(coordinator, after.last_index)]
        assert not any(isinstance(event, StageFailed | ShardLeaseExpired) for event in events)

        tokens, reason = generate_tokens(second.stages[0].address, second.instance_id, PROMPT, NEW_TOKENS)
        assert reason == "length"
        assert tokens == reference_tokens(models_root(homes[0]) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)
    finally:
        for process in processes:
            process.stop()
