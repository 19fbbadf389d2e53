"""Coordinator replicas started with `--expect 3` and no `--peer` list find each other over mDNS on
loopback and bootstrap one Raft cluster (the same three voters and one leader on every replica)."""

import secrets
import time
from pathlib import Path

import grpc
import pytest

from tests.processes import ServiceProcess, cluster_state, free_port, start_strata

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]


def _view(address: str) -> tuple[tuple[str, ...], str] | None:
    try:
        state = cluster_state(address, timeout_seconds=5)
    except grpc.RpcError:
        return None
    return tuple(sorted(state.voters)), state.leader


def test_three_replicas_bootstrap_from_discovery(tmp_path: Path) -> None:
    cluster = f"replicas-{secrets.token_hex(3)}"
    ports = [free_port() for _ in range(3)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    replicas: list[ServiceProcess] = []
    try:
        for index, port in enumerate(ports):
            arguments = ["coordinator", "--cluster", cluster, "--interface", "127.0.0.1", "--port", str(port)]
            replicas.append(
                start_strata(f"replica-{index}", [*arguments, "--expect", "3"], tmp_path / f"home-{index}", tmp_path)
            )
        views: list[tuple[tuple[str, ...], str] | None] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert all(replica.process.poll() is None for replica in replicas)
            views = [_view(address) for address in addresses]
            leaders = {view[1] for view in views if view is not None}
            agreed = all(view is not None and view[0] == tuple(sorted(addresses)) for view in views)
            if agreed and len(leaders) == 1 and leaders <= set(addresses):
                return
            time.sleep(1.0)
        logs = "\n".join(f"--- {replica.name}\n{replica.log_tail()}" for replica in replicas)
        raise AssertionError(f"no single cluster of three: {views}\n{logs}")
    finally:
        for replica in replicas:
            replica.stop()
