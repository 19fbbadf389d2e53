"""Serving goes on when the coordinator leader dies: three replicas, one shard server holding a tiny
llama; kill -9 the leader, and the shard keeps generating the same tokens while a new leader takes
over, without re-placing the instance (the new leader gives every shard a fresh lease)."""

import time
from pathlib import Path

import pytest

from coordinator.shard_leases import DEFAULT_SHARD_LEASE_SECONDS
from services.ids import ModelId
from services.model_store import ModelStore
from services.settings import models_root
from tests.coordinator.replica_processes import ReplicaSet, get_state, wait_for_leader
from tests.coordinator.test_shard_lease_replacement import (
    MODEL,
    NEW_TOKENS,
    PREFILL_STEP_SIZE,
    PROMPT,
    wait_for_ready_instance,
)
from tests.processes import ServiceProcess, free_port, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens
from tests.tiny_architectures import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_model_keeps_serving_through_a_leader_change(tmp_path: Path) -> None:
    coordinator_arguments = (
        "--model",
        MODEL,
        "--prefill-step-size",
        str(PREFILL_STEP_SIZE),
        "--compute-dtype",
        "stored",
    )
    replicas = ReplicaSet.create(tmp_path, 3, coordinator_arguments)
    for home in [*(tmp_path / f"home-{number}" for number in range(3)), tmp_path / "shard-home"]:
        build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId(MODEL)))
    shard: ServiceProcess | None = None
    try:
        replicas.start_all()
        leader = wait_for_leader(replicas)
        follower = next(number for number in range(3) if number != leader)
        port = free_port()
        shard = start_strata(
            "shard",
            ["shard", "--no-mdns", "--port", str(port), "--coordinator", replicas.addresses[follower]],
            tmp_path / "shard-home",
            tmp_path / "logs",
        )
        wait_for_grpc_health(shard, f"127.0.0.1:{port}")
        instance = wait_for_ready_instance(replicas.addresses[follower], "", 90, [shard, *replicas.processes.values()])
        before, _ = generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, NEW_TOKENS)

        replicas.kill(leader)
        new_leader = wait_for_leader(replicas, other_than=replicas.addresses[leader])
        during, _ = generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, NEW_TOKENS)
        # Outlast a shard lease under the new leader: the shard renews it through the follower.
        time.sleep(DEFAULT_SHARD_LEASE_SECONDS + 2)
        after, _ = generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, NEW_TOKENS)

        assert before == during == after
        state = get_state(replicas.addresses[new_leader])
        assert state is not None
        assert [(kept.instance_id, kept.status) for kept in state.instances] == [(instance.instance_id, "ready")]
    finally:
        if shard is not None:
            shard.stop()
        replicas.stop_all()
