"""Serving goes on when the coordinator leader dies: three replicas, one shard server holding a tiny
llama; kill -9 the leader, and the shard keeps generating the same tokens while a new leader takes
over, without re-placing the instance (the new leader gives every shard a fresh lease); a stream
open when the leader dies completes uninterrupted with the tokens of an undisturbed run."""

import threading
import time
from pathlib import Path

import pytest

from coordinator.shard_leases import DEFAULT_SHARD_LEASE_SECONDS
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import shard_pb2, shard_pb2_grpc
from tests.coordinator.replica_processes import ReplicaSet, get_state, wait_for_leader
from tests.coordinator.tiny_instance import (
    MODEL,
    NEW_TOKENS,
    PREFILL_STEP_SIZE,
    PROMPT,
    wait_for_ready_instance,
)
from tests.processes import ServiceProcess, free_port, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens
from tests.tiny_architectures import build_tiny_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(240)]


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

        # A stream open while the leader dies: it goes on untouched (tokens never pass the coordinator).
        streaming = _OpenStream(instance.stages[0].address, instance.instance_id)
        streaming.wait_for_tokens(4)
        replicas.kill(leader)
        assert not streaming.done.is_set(), "the stream was still open when the leader died"
        new_leader = wait_for_leader(replicas, other_than=replicas.addresses[leader])
        streamed = streaming.result()
        assert streamed == generate_tokens(instance.stages[0].address, instance.instance_id, PROMPT, STREAM_TOKENS)[0]
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


STREAM_TOKENS = 400


class _OpenStream:
    """A long Generate call read in a thread, so the test can act while it streams."""

    def __init__(self, address: str, instance_id: str) -> None:
        self.tokens: list[int] = []
        self.done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(address, instance_id), daemon=True)
        self._thread.start()

    def _read(self, address: str, instance_id: str) -> None:
        try:
            with cluster_sync_channel(address) as channel:
                replies = shard_pb2_grpc.ShardStub(channel).Generate(
                    shard_pb2.GenerateRequest(
                        request_id="open-through-leader-change",
                        instance_id=instance_id,
                        prompt_tokens=PROMPT,
                        max_tokens=STREAM_TOKENS,
                    ),
                    timeout=120,
                )
                for reply in replies:
                    if reply.HasField("token"):
                        self.tokens.append(reply.token.token_id)
        except BaseException as error:  # reported by result()
            self._error = error
        finally:
            self.done.set()

    def wait_for_tokens(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.tokens) < count and not self.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)

    def result(self) -> list[int]:
        self._thread.join(timeout=120)
        if self._error is not None:
            raise self._error
        return self.tokens
