"""Membership over real processes: a dead voter is removed with `strata cluster remove-replica`; a
replica started later finds the cluster, joins as a learner, is promoted and then counts as a voter."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.coordinator.replica_processes import (
    WHOLE_LOG,
    CommandClient,
    ReplicaSet,
    assert_logs_agree,
    get_state,
    wait_for_leader,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]


def wait_for_voters(address: str, voters: set[str], timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        state = get_state(address)
        if state is not None and set(state.voters) == voters and not state.learners:
            return
        time.sleep(0.3)
    raise TimeoutError(f"voters never became {sorted(voters)}; last: {get_state(address)}")


def test_a_dead_voter_is_removed_and_a_late_replica_joins_then_votes(tmp_path: Path) -> None:
    replicas = ReplicaSet.create(tmp_path, 4, WHOLE_LOG, expect=3)
    first_three = replicas.addresses[:3]
    client = CommandClient("membership-client", first_three)
    try:
        for number in range(3):
            replicas.start(number, peers_of=first_three)
        for number in range(3):
            replicas.wait_serving(number)
        leader = wait_for_leader(replicas)
        client.start()
        client.wait_for_acknowledged(5, timeout_seconds=60)

        dead, follower = (number for number in range(3) if number != leader)
        replicas.kill(dead)
        removal = subprocess.run(
            [sys.executable, "-m", "services.app.cli", "cluster", "remove-replica", replicas.addresses[dead],
             "--coordinator", replicas.addresses[follower]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert removal.returncode == 0, removal.stderr
        wait_for_voters(replicas.addresses[leader], {replicas.addresses[leader], replicas.addresses[follower]})
        client.wait_for_acknowledged(client.acknowledged_count() + 5, timeout_seconds=60)

        replicas.start(3, peers_of=[replicas.addresses[leader], replicas.addresses[follower]])
        replicas.wait_serving(3)
        expected = {replicas.addresses[number] for number in (leader, follower, 3)}
        wait_for_voters(replicas.addresses[leader], expected)
        client.wait_for_acknowledged(client.acknowledged_count() + 5, timeout_seconds=60)

        # With the old leader gone, the two others must be a majority: the newcomer really votes.
        replicas.kill(leader)
        new_leader = wait_for_leader(replicas, other_than=replicas.addresses[leader])
        assert new_leader in (follower, 3)
        client.wait_for_acknowledged(client.acknowledged_count() + 5, timeout_seconds=60)
        client.stopping.set()
        client.join(timeout=30)
        assert_logs_agree(replicas, client)
    finally:
        client.stopping.set()
        replicas.stop_all()
