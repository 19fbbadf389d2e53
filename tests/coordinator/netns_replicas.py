"""Coordinator replicas on namespace hosts (tests/netns.py), asked through tests/coordinator/netns_probe.py
run inside a host's namespace: its own state, a command, and waiting until the replicas agree."""

import json
import time
from collections.abc import Callable
from typing import Any

from tests.netns import NetnsHost, NetnsLab

PORT = 52416
PROBE_TIMEOUT_SECONDS = 60.0


def probe(lab: NetnsLab, host: NetnsHost, *arguments: str) -> dict[str, Any]:
    done = lab.run_python(host, ["-m", "tests.coordinator.netns_probe", *arguments], PROBE_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise AssertionError(f"probe failed: {done.stderr}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def own_state(lab: NetnsLab, host: NetnsHost) -> dict[str, Any]:
    return probe(lab, host, "state", f"{host.address}:{PORT}")


def wait_for(
    lab: NetnsLab,
    hosts: list[NetnsHost],
    check: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout_seconds: float = 90.0,
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        states = [own_state(lab, host) for host in hosts]
        if check(states):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout_seconds}s:\n{lab.logs()}")


def single_leader(states: list[dict[str, Any]]) -> bool:
    leaders = {state.get("leader") for state in states}
    return len(leaders) == 1 and "" not in leaders and None not in leaders
