"""A shard server's lease expires (kill -9): its instance is re-placed on the remaining shard and
serves again; and a shard refuses an instruction carrying an older term than it has seen (fencing).

Real processes: one coordinator replica and two shard servers over a tiny llama model.
"""

from pathlib import Path

import grpc
import pytest

from coordinator.shard_leases import DEFAULT_SHARD_LEASE_SECONDS
from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import shard_pb2, shard_pb2_grpc
from tests.coordinator.replica_processes import get_state
from tests.coordinator.tiny_instance import MODEL, NEW_TOKENS, PREFILL_STEP_SIZE, PROMPT, wait_for_ready_instance
from tests.processes import ServiceProcess, free_port, start_coordinator, start_strata, wait_for_grpc_health
from tests.ring_client import generate_tokens, reference_tokens
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(240)]


def test_an_expired_shard_lease_re_places_the_instance_and_old_terms_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId(MODEL)))
    processes: list[ServiceProcess] = []
    try:
        coordinator = start_coordinator(
            processes,
            home,
            tmp_path / "logs",
            ["--model", MODEL, "--prefill-step-size", str(PREFILL_STEP_SIZE), "--compute-dtype", "stored"],
        )
        shards: dict[str, ServiceProcess] = {}
        for index in range(2):
            port = free_port()
            arguments = ["shard", "--no-mdns", "--port", str(port), "--coordinator", coordinator]
            shard = start_strata(f"shard-{index}", arguments, home, tmp_path / "logs")
            processes.append(shard)
            wait_for_grpc_health(shard, f"127.0.0.1:{port}")
            shards[f"127.0.0.1:{port}"] = shard

        first = wait_for_ready_instance(coordinator, avoiding="", timeout_seconds=90, processes=processes)
        victim = first.stages[-1]
        shards[victim.address].stop(9)

        lease_and_reload = DEFAULT_SHARD_LEASE_SECONDS + 90
        second = wait_for_ready_instance(coordinator, victim.shard_id, lease_and_reload, processes)
        state = get_state(coordinator)
        assert state is not None
        assert victim.shard_id not in {shard.shard_id for shard in state.shards}
        assert second.instance_id != first.instance_id
        assert [(stage.start_layer, stage.end_layer) for stage in second.stages] == [(0, NUM_LAYERS)]

        survivor = second.stages[0].address
        tokens, reason = generate_tokens(survivor, second.instance_id, PROMPT, NEW_TOKENS)
        assert reason == "length"
        assert tokens == reference_tokens(models_root(home) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)

        stale = shard_pb2.AssignRequest(
            term=state.term - 1,
            instance_id="stale@1",
            model_id=MODEL,
            start_layer=0,
            end_layer=NUM_LAYERS,
            num_layers=NUM_LAYERS,
            next_address=survivor,
            prefill_step_size=PREFILL_STEP_SIZE,
        )
        refusal: grpc.RpcError | None = None
        with cluster_sync_channel(survivor) as channel:
            try:
                shard_pb2_grpc.ShardStub(channel).Assign(stale, timeout=30)
            except grpc.RpcError as error:
                refusal = error
        assert isinstance(refusal, grpc.Call), "a shard accepted an instruction from an older term"
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        for process in processes:
            process.stop()
