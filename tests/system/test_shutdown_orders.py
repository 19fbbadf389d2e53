"""Every service stops cleanly in every order: SIGTERM to the gateway before or after the coordinator,
and with a shard server already dead (`kill -9`). Each exits 0 within its grace period (so was never
killed) and no log holds a traceback. Real processes over a tiny random-weight llama, two shards,
with a completion served first so every stream and watch is open when the stopping starts."""

import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.app.service_process import STOP_GRACE_SECONDS
from tests.processes import ServiceProcess, start_lone_shards
from tests.system.tiny_cluster import Cluster, ready_instance, stream, tiny_cluster

pytestmark = [pytest.mark.process, pytest.mark.model]

Order = Sequence[str]
"""Roles in the order they get SIGTERM: `gateway`, `coordinator`, `shards`."""


def _stop_in_time(process: ServiceProcess) -> None:
    started = time.monotonic()
    status = process.stop()
    assert status == 0, f"{process.name} stopped with status {status}:\n{process.log_tail()}"
    assert time.monotonic() - started < STOP_GRACE_SECONDS, f"{process.name} outlived its grace period"


def _processes_of(cluster: Cluster, role: str) -> list[ServiceProcess]:
    if role == "shards":
        return list(cluster.shards.values())
    return [process for process in cluster.processes if process.name == role]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("order", "shard_dead_first"),
    [
        (("gateway", "coordinator", "shards"), False),
        (("coordinator", "gateway", "shards"), False),
        (("shards", "coordinator", "gateway"), False),
        (("coordinator", "gateway", "shards"), True),
    ],
    ids=["gateway-first", "coordinator-first", "shards-first", "a-shard-dead-already"],
)
def test_every_service_stops_cleanly_in_any_order(tmp_path: Path, order: Order, shard_dead_first: bool) -> None:
    with tiny_cluster(tmp_path, 2) as cluster:
        ready_instance(cluster, 2, "", 120)
        assert stream(cluster, "Hello world! The quick brown fox", 0.0, None, [0], 0)
        remaining = list(cluster.processes)
        if shard_dead_first:
            victim = next(iter(cluster.shards.values()))
            victim.process.send_signal(signal.SIGKILL)
            assert victim.process.wait(timeout=10) == -signal.SIGKILL
            remaining.remove(victim)
            time.sleep(1.0)  # the others notice the dead peer first
        for role in order:
            for process in _processes_of(cluster, role):
                if process in remaining:
                    _stop_in_time(process)
        for process in cluster.processes:
            log = process.log_path.read_text(errors="replace")
            assert "Traceback" not in log, f"{process.name}:\n{log[-4000:]}"


@pytest.mark.timeout(120)
def test_a_shard_stopped_as_soon_as_it_serves_exits_cleanly(tmp_path: Path) -> None:
    # SIGTERM right after gRPC health: the shard may still be starting its announcement, which must not
    # leave the signal to its default action (status -15, as a test ring once saw).
    shards: list[ServiceProcess] = []
    try:
        start_lone_shards(shards, 1, tmp_path / "home", tmp_path / "logs")
        _stop_in_time(shards[0])
        assert "stopping" in shards[0].log_path.read_text(errors="replace")
    finally:
        for shard in shards:
            shard.stop()
