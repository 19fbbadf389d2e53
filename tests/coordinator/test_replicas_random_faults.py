"""Random kills and restarts of coordinator replicas while commands flow (bounded rounds, seed printed).

At the end every replica's log agrees and no acknowledged command is lost or applied twice.
Set STRATA_FAULT_SEED to replay a failing run.
"""

import os
import random
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

ROUNDS = 6
COMMANDS_PER_ROUND = 5


def current_leader(replicas: ReplicaSet) -> int | None:
    for number in replicas.live():
        state = get_state(replicas.addresses[number])
        if state is not None and state.replicas[0].role == "leader":
            return number
    return None


def test_random_kills_and_restarts_lose_no_acknowledged_command(tmp_path: Path) -> None:
    seed = int(os.environ.get("STRATA_FAULT_SEED", str(time.time_ns() % 1_000_000)))
    print(f"fault seed: {seed}")
    chooser = random.Random(seed)
    replicas = ReplicaSet.create(tmp_path, 3, WHOLE_LOG)
    client = CommandClient("fault-client", replicas.addresses)
    try:
        replicas.start_all()
        wait_for_leader(replicas)
        client.start()
        for round_number in range(ROUNDS):
            client.wait_for_acknowledged(client.acknowledged_count() + COMMANDS_PER_ROUND, timeout_seconds=90)
            leader = current_leader(replicas)
            victims = [leader if leader is not None and chooser.random() < 0.5 else chooser.randrange(3)]
            if chooser.random() < 0.25:
                # Two down: the survivor is a minority and must not commit anything until they return.
                victims.append(chooser.choice([number for number in range(3) if number != victims[0]]))
            print(f"round {round_number}: killing {victims} (leader {leader})")
            for victim in victims:
                replicas.kill(victim)
            time.sleep(chooser.uniform(0.2, 2.5))
            for victim in victims:
                replicas.start(victim)
            for victim in victims:
                replicas.wait_serving(victim)
        client.wait_for_acknowledged(client.acknowledged_count() + COMMANDS_PER_ROUND, timeout_seconds=90)
        client.stopping.set()
        client.join(timeout=40)

        wait_for_leader(replicas)
        assert_logs_agree(replicas, client)
    finally:
        client.stopping.set()
        replicas.stop_all()
