"""A local cluster for the GPU run: coordinator, N shard servers and a gateway as separate processes
on 127.0.0.1 (`strata run`'s own start), and requests by token id through the real ring.

The shard processes compute on MLX's default device, the same one the reference in this process uses.
"""

import time
import uuid
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.app.benchmark.ready_instances import ready_instance_count
from services.app.local_cluster import LocalClusterOptions, gateway_ready, start_services, stop_services
from services.app.operator_commands import fetch_status
from services.app.ports import free_port
from services.kernel.compute_dtype import ComputeDtype
from services.kernel.ids import ModelId
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE, home_sharing_models
from services.platform.auth import (
    ClusterSecurity,
    cluster_security,
    configure_cluster_security,
    ensure_cluster_token,
    write_cluster_token,
)
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import common_pb2, shard_pb2, shard_pb2_grpc

READY_TIMEOUT_SECONDS = 400.0
"""A fresh GPU process compiles its kernels on first use: the first load is slow."""
REQUEST_TIMEOUT_SECONDS = 300.0


class ClusterError(Exception):
    """The cluster did not become ready, or a service died while it started."""


@dataclass(frozen=True)
class RunningCluster:
    gateway_url: str
    coordinator_address: str
    instance_id: str
    shard_addresses: tuple[str, ...]
    """In ring order: the first receives the requests."""
    stages: tuple[tuple[int, int], ...]


@contextmanager
def local_cluster(
    home: Path,
    model_id: ModelId,
    shards: int,
    compute_dtype: ComputeDtype,
    prefill_step_size: int = DEFAULT_PREFILL_STEP_SIZE,
) -> Generator[RunningCluster]:
    """Started and ready (one instance over every shard); every process stopped by its id after."""
    with home_sharing_models(home) as private:
        # This process's calls carry the cluster's token, as `strata run`'s children do.
        token = cluster_security().token or ensure_cluster_token(home)
        configure_cluster_security(ClusterSecurity(token))
        write_cluster_token(private, token)
        gateway_port, coordinator_port = free_port(), free_port()
        options = LocalClusterOptions(
            home=private,
            host="127.0.0.1",
            gateway_port=gateway_port,
            coordinator_port=coordinator_port,
            first_shard_port=free_port(consecutive=shards),
            shards=shards,
            model_id=model_id,
            prefill_step_size=prefill_step_size,
            compute_dtype=compute_dtype,
            metrics_port=0,
        )
        children = start_services(options)
        try:
            url = f"http://127.0.0.1:{gateway_port}"
            coordinator = f"127.0.0.1:{coordinator_port}"
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not (gateway_ready(url) and ready_instance_count(coordinator) >= 1):
                dead = [name for name, child in children if child.poll() is not None]
                if dead:
                    raise ClusterError(f"the {shards}-shard cluster lost {', '.join(dead)} while starting")
                if time.monotonic() > deadline:
                    raise ClusterError(f"the {shards}-shard cluster was not ready in {READY_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.25)
            instance = next(item for item in fetch_status(coordinator).instances if item.status == "ready")
            yield RunningCluster(
                gateway_url=url,
                coordinator_address=coordinator,
                instance_id=instance.instance_id,
                shard_addresses=tuple(stage.address for stage in instance.stages),
                stages=tuple((stage.start_layer, stage.end_layer) for stage in instance.stages),
            )
        finally:
            stop_services(children)


def ring_tokens(cluster: RunningCluster, prompt: Sequence[int], max_tokens: int) -> list[int]:
    """One greedy request by token id through the ring (no stop token: exactly `max_tokens`)."""
    with cluster_sync_channel(cluster.shard_addresses[0]) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex,
                instance_id=cluster.instance_id,
                prompt_tokens=list(prompt),
                max_tokens=max_tokens,
                sampling=common_pb2.SamplingParams(temperature=0.0, top_p=1.0, seed=0),
            ),
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        return [reply.token.token_id for reply in replies if reply.HasField("token")]


def shard_stats(address: str) -> shard_pb2.ShardStats:
    with cluster_sync_channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).GetStats(shard_pb2.GetStatsRequest(), timeout=30)
