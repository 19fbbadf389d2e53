"""Services started with no addresses at all, only `--interface 127.0.0.1` and a cluster name, find
each other over mDNS and serve the embedded model; a second cluster on the same loopback stays apart."""

import secrets
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.discovery.ask import ask_until_answered
from tests.fixtures import give_model
from tests.processes import ServiceProcess, cluster_state, free_port, start_strata, stopping

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(400)]

LOOPBACK = ["--interface", "127.0.0.1"]


def exited(processes: list[ServiceProcess]) -> str | None:
    """Which service exited early, if any."""
    for process in processes:
        if process.process.poll() is not None:
            return f"{process.name} exited with {process.process.returncode}"
    return None


def test_discovery_on_loopback_forms_one_cluster_per_name(embedded_models: Path, tmp_path: Path) -> None:
    cluster, other = f"loop-{secrets.token_hex(3)}", f"other-{secrets.token_hex(3)}"
    home, other_home, logs = tmp_path / "home", tmp_path / "other-home", tmp_path / "logs"
    give_model(embedded_models, home)
    coordinator_port, other_coordinator_port, gateway_port = free_port(), free_port(), free_port()
    shard_ports = [free_port(), free_port(), free_port()]
    ours = ["--cluster", cluster, *LOOPBACK]
    theirs = ["--cluster", other, *LOOPBACK]
    processes: list[ServiceProcess] = []
    skewed_port = free_port()
    with stopping(processes):
        # A shard of our cluster speaking a future protocol version: refused, never placed on.
        log = logs / "skewed.log"
        logs.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            skewed = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.discovery.announce",
                    cluster,
                    "shard",
                    str(skewed_port),
                    "99",
                    "127.0.0.1",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        processes.append(ServiceProcess("skewed-shard", skewed, log))
        processes.append(
            start_strata(
                "coordinator",
                [
                    "coordinator",
                    *ours,
                    "--port",
                    str(coordinator_port),
                    "--model",
                    EMBEDDED_MODEL_ID,
                    "--min-shards",
                    "2",
                ],
                home,
                logs,
            )
        )
        # Another cluster on the same loopback: its coordinator and shard must not mix with ours.
        processes.append(
            start_strata(
                "other-coordinator", ["coordinator", *theirs, "--port", str(other_coordinator_port)], other_home, logs
            )
        )
        processes.append(
            start_strata("other-shard", ["shard", *theirs, "--port", str(shard_ports[2])], other_home, logs)
        )
        for index in range(2):
            processes.append(
                start_strata(f"shard-{index}", ["shard", *ours, "--port", str(shard_ports[index])], home, logs)
            )
        processes.append(start_strata("gateway", ["gateway", *ours, "--port", str(gateway_port)], home, logs))
        answer = ask_until_answered(f"http://127.0.0.1:{gateway_port}", 240, lambda: exited(processes))
        assert "Paris" in answer
        state = cluster_state(f"127.0.0.1:{coordinator_port}")
        assert sorted(shard.address for shard in state.shards) == sorted(
            f"127.0.0.1:{port}" for port in shard_ports[:2]
        )
        ready = [instance for instance in state.instances if instance.status == "ready"]
        assert len(ready) == 1
        assert len(ready[0].stages) == 2
        # Memory is counted per host: the two shards of this host (one node id) split what it offers.
        offered = [shard.available_memory_bytes for shard in state.shards]
        assert offered[0] == offered[1]
        assert 0 < offered[0] <= psutil.virtual_memory().total // 2
        coordinator_log = processes[1].log_path.read_text()
        assert f"refusing shard 127.0.0.1:{skewed_port}" in coordinator_log
        assert "protocol version 99 is incompatible" in coordinator_log
        # ... and `strata status` says so too.
        refused = [peer for peer in state.refused_peers if peer.address == f"127.0.0.1:{skewed_port}"]
        assert refused and "protocol version 99 is incompatible" in refused[0].reason
        other_state = cluster_state(f"127.0.0.1:{other_coordinator_port}")
        assert [shard.address for shard in other_state.shards] == [f"127.0.0.1:{shard_ports[2]}"]
