"""Two instances of one model on two shard servers (`coordinator --instances 2`): the planner puts a
whole copy on each, the gateway spreads concurrent requests over both, and when one copy's shard
server is killed under open streams they finish on the other with the undisturbed text, without
waiting for a re-placement.

Real processes over the tiny llama of tests/system/tiny_cluster.py. Each copy is a one-shard
instance, whose output the ring exactness tests hold to plain mlx-lm token for token.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata_wire import coordinator_pb2
from tests.coordinator.replica_processes import get_state
from tests.ring_client import shard_stats
from tests.system.tiny_cluster import Cluster, run_all, run_all_killing, tiny_cluster

pytestmark = [pytest.mark.process, pytest.mark.model]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with tiny_cluster(tmp_path, 2, ["--instances", "2"]) as started:
        yield started


def _ready_instances(cluster: Cluster, count: int, timeout_seconds: float) -> list[coordinator_pb2.ModelInstance]:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = get_state(cluster.coordinator)
        ready = [instance for instance in state.instances if instance.status == "ready"] if state else []
        if len(ready) >= count:
            return ready
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {count} ready instances within {timeout_seconds} s:\n{cluster.logs()}")


@pytest.mark.timeout(300)
def test_two_instances_share_the_streams_and_a_killed_one_hands_them_to_the_other(cluster: Cluster) -> None:
    instances = _ready_instances(cluster, 2, 120)
    assert sorted(len(instance.stages) for instance in instances) == [1, 1]
    assert {instance.stages[0].address for instance in instances} == set(cluster.shards)

    steps_before = {address: shard_stats(address).steps for address in cluster.shards}
    undisturbed, chunk_counts = run_all(cluster)
    assert all(undisturbed), "every undisturbed stream produced text"
    assert all(shard_stats(address).steps > steps_before[address] for address in cluster.shards), (
        "both instances computed: the gateway spread the four streams"
    )

    victim, survivor = instances
    disturbed = run_all_killing(cluster, cluster.shards[victim.stages[0].address], chunk_counts)

    assert disturbed == undisturbed
    gateway_log = cluster.processes[-1].log_path.read_text(errors="replace")
    assert "recovered after" in gateway_log, f"no stream needed recovery:\n{cluster.logs()}"
    # Replayed on the survivor, which was ready all along, not on a re-placed instance.
    assert f"on instance {survivor.instance_id} as" in gateway_log, cluster.logs()
