"""`strata run` supervises its children as systemd would: `kill -9` of a shard server, then of the
coordinator, then of the gateway while four streams run (two greedy, two seeded), and the cluster heals
without a restart of `strata run`. A shard's or the coordinator's death leaves every stream with the
text of the undisturbed run; the gateway's breaks the clients' connections, and their retry succeeds
once it is back. SIGTERM at the end stops every process within the grace period, with no traceback.

One `strata run` (two shard servers, a tiny random-weight llama whose streams outlast the kill) serves
the tests of this module in order.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from services.app.local_cluster import STOP_GRACE_SECONDS
from tests.processes import ServiceProcess, child_pids, free_port, pid_alive, start_strata, wait_for_http_ok
from tests.system.tiny_cluster import PREFILL_STEP_SIZE, REQUESTS, Cluster, model_home, ready_instance, run_all, stream

pytestmark = [pytest.mark.process, pytest.mark.model]

HEAL_TIMEOUT_SECONDS = 120.0


@dataclass
class SupervisedRun:
    process: ServiceProcess
    cluster: Cluster
    undisturbed: list[str]
    chunk_counts: list[int]


def _role(pid: int) -> str:
    """`coordinator`, `shard` or `gateway`: the CLI command a child of `strata run` runs."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return arguments[arguments.index(b"services.app.cli") + 1].decode()


def children_by_role(run: SupervisedRun) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {}
    for pid in child_pids(run.process.pid):
        if pid_alive(pid):
            roles.setdefault(_role(pid), []).append(pid)
    return roles


def wait_for_children(run: SupervisedRun, other_than: int) -> dict[str, list[int]]:
    """The children once all four run again and `other_than` (a killed pid) is gone."""
    deadline = time.monotonic() + HEAL_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        roles = children_by_role(run)
        running = [pid for pids in roles.values() for pid in pids]
        if len(running) == 4 and other_than not in running and len(roles.get("shard", [])) == 2:
            return roles
        time.sleep(0.2)
    raise TimeoutError(f"the children did not come back: {children_by_role(run)}\n{run.process.log_tail()}")


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedRun]:
    scratch = tmp_path_factory.mktemp("supervision")
    home = model_home(scratch / "home", scratch)
    gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port(consecutive=2)
    arguments = ["run", "--model", "tiny-llama", "--port", str(gateway_port)]
    arguments += ["--coordinator-port", str(coordinator_port), "--shard-port", str(shard_port)]
    arguments += ["--prefill-step-size", str(PREFILL_STEP_SIZE), "--compute-dtype", "stored", "--metrics-port", "0"]
    process = start_strata("strata-run", arguments, home, scratch / "logs")
    try:
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_for_http_ok(process, f"{gateway_url}/health", timeout_seconds=180)
        cluster = Cluster(f"127.0.0.1:{coordinator_port}", gateway_url, {}, [process])
        ready_instance(cluster, 2, "", HEAL_TIMEOUT_SECONDS)
        undisturbed, chunk_counts = run_all(cluster)
        yield SupervisedRun(process, cluster, undisturbed, chunk_counts)
    except BaseException:
        print(process.log_tail(200))
        raise
    finally:
        process.stop()


def run_all_killing_pid(run: SupervisedRun, pid: int) -> list[str]:
    """The four requests again with `kill -9` of `pid` while all of them stream; their texts."""
    started = threading.Event()

    def kill_when_streaming() -> None:
        if started.wait(timeout=120):
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_streaming)
    killer.start()
    try:
        texts, _ = run_all(run.cluster, kill_at=(run.chunk_counts, started))
    finally:
        started.set()
        killer.join(timeout=10)
    return texts


def strata_status(run: SupervisedRun) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "services.app.cli", "status", "--coordinator", run.cluster.coordinator],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout


@pytest.mark.timeout(400)
def test_a_killed_shard_server_is_restarted_and_every_stream_keeps_its_text(supervised_run: SupervisedRun) -> None:
    run = supervised_run
    [victim, _] = children_by_role(run)["shard"]
    assert run_all_killing_pid(run, victim) == run.undisturbed
    roles = wait_for_children(run, other_than=victim)
    instance = ready_instance(run.cluster, 2, "", HEAL_TIMEOUT_SECONDS)
    status = strata_status(run)
    for stage in instance.stages:
        assert stage.address in status, status
    assert "restarting" in run.process.log_path.read_text(errors="replace")
    assert len(roles["shard"]) == 2


@pytest.mark.timeout(400)
def test_a_killed_coordinator_is_restarted_with_its_state(supervised_run: SupervisedRun) -> None:
    run = supervised_run
    instance_before = ready_instance(run.cluster, 2, "", HEAL_TIMEOUT_SECONDS)
    [victim] = children_by_role(run)["coordinator"]
    assert run_all_killing_pid(run, victim) == run.undisturbed
    wait_for_children(run, other_than=victim)
    # Only the first start of a run is fresh: the restarted replica still knows the instance.
    assert ready_instance(run.cluster, 2, "", HEAL_TIMEOUT_SECONDS).instance_id == instance_before.instance_id
    assert instance_before.instance_id in strata_status(run)


@pytest.mark.timeout(400)
def test_a_killed_gateway_breaks_the_connections_and_a_retry_succeeds(supervised_run: SupervisedRun) -> None:
    run = supervised_run
    [victim] = children_by_role(run)["gateway"]
    progress = [0] * len(REQUESTS)
    outcomes: list[str | BaseException] = []

    def one_stream(index: int) -> None:
        message, temperature, seed = REQUESTS[index]
        try:
            outcomes.append(stream(run.cluster, message, temperature, seed, progress, index))
        except (openai.APIConnectionError, openai.APIError) as error:
            outcomes.append(error)

    threads = [threading.Thread(target=one_stream, args=(index,)) for index in range(len(REQUESTS))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(count > 0 for count in progress):
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == len(REQUESTS)
    assert all(isinstance(outcome, BaseException) for outcome in outcomes), outcomes
    wait_for_children(run, other_than=victim)
    wait_for_http_ok(run.process, f"{run.cluster.gateway_url}/health", timeout_seconds=HEAL_TIMEOUT_SECONDS)
    ready_instance(run.cluster, 2, "", HEAL_TIMEOUT_SECONDS)
    retried, _ = run_all(run.cluster)
    assert retried == run.undisturbed


@pytest.mark.timeout(200)
def test_sigterm_after_the_restarts_stops_every_process_without_a_traceback(supervised_run: SupervisedRun) -> None:
    run = supervised_run
    children = child_pids(run.process.pid)
    assert len(children) == 4
    run.process.process.send_signal(signal.SIGTERM)
    run.process.process.wait(timeout=STOP_GRACE_SECONDS + 20)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if pid_alive(pid)]
    log = run.process.log_path.read_text(errors="replace")
    assert "did not stop in time" not in log
    assert "Traceback" not in log, log[-4000:]
