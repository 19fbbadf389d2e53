"""Random kills, restarts and partitions of three replicas on namespace hosts while a client on a
fourth host keeps sending commands (bounded rounds, seed printed; STRATA_FAULT_SEED replays a run).

At the end every replica's log agrees, every acknowledged command is applied exactly once and no
unacknowledged one more than once.
"""

import os
import random
import time
from pathlib import Path

import pytest

from tests.coordinator.netns_replicas import PORT, own_state, probe, single_leader, wait_for
from tests.netns import NetnsLab, require_namespaces
from tests.processes import ServiceProcess

pytestmark = [pytest.mark.netns, pytest.mark.process, pytest.mark.timeout(420)]

ROUNDS = 5
CLIENT = "random"


def test_random_kills_restarts_and_partitions_lose_no_acknowledged_command(tmp_path: Path) -> None:
    require_namespaces()
    seed = int(os.environ.get("STRATA_FAULT_SEED", str(time.time_ns() % 1_000_000)))
    print(f"fault seed: {seed}")
    chooser = random.Random(seed)
    with NetnsLab.create(tmp_path) as lab:
        hosts = [lab.add_host() for _ in range(3)]
        client_host = lab.add_host("client")
        peers = [argument for host in hosts for argument in ("--peer", f"{host.address}:{PORT}")]
        arguments = {
            host.name: [
                "coordinator",
                "--no-mdns",
                "--host",
                host.address,
                "--port",
                str(PORT),
                "--expect",
                "3",
                *peers,
            ]
            for host in hosts
        }
        replicas: dict[str, ServiceProcess] = {
            host.name: lab.start(host, "coordinator", arguments[host.name]) for host in hosts
        }
        wait_for(lab, hosts, single_leader, "no single leader")
        acknowledged: list[int] = []
        sent = 0

        def send(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                target = chooser.choice(hosts)
                answer = probe(lab, client_host, "command", f"{target.address}:{PORT}", CLIENT, str(sent), "8")
                if answer["acknowledged"]:
                    acknowledged.append(sent)

        send(2)
        for round_number in range(ROUNDS):
            victim = chooser.choice(hosts)
            action = chooser.choice(["kill", "partition"])
            print(f"round {round_number}: {action} {victim.name}")
            if action == "kill":
                replicas[victim.name].process.kill()
                replicas[victim.name].process.wait(timeout=10)
                send(2)
                replicas[victim.name] = lab.start(victim, "coordinator", arguments[victim.name])
            else:
                lab.set_link(victim, up=False)
                send(2)
                lab.set_link(victim, up=True)
            send(1)
        send(2)
        assert acknowledged, "no command was acknowledged at all"
        wait_for(
            lab,
            hosts,
            lambda states: (
                single_leader(states)
                and len({state["last_index"] for state in states}) == 1
                and states[0]["applied_commands"].get(CLIENT, 0) >= acknowledged[-1]
            ),
            "the replicas did not converge",
            timeout_seconds=120,
        )
        states = [own_state(lab, host) for host in hosts]
        assert all(state["log"] == states[0]["log"] for state in states)
        logged = [int(sequence) for client, sequence in states[0]["log"] if client == CLIENT]
        # A retry may leave a command in the log twice; only a record newer than everything applied
        # before it applies (the dedup table), the others change nothing.
        applied: list[int] = []
        for sequence in logged:
            if not applied or sequence > applied[-1]:
                applied.append(sequence)
        assert set(acknowledged) <= set(applied), f"acknowledged {acknowledged}, applied {applied}, log {logged}"
        assert all(state["applied_commands"][CLIENT] == applied[-1] for state in states)
