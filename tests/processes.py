"""Real service processes for tests: start `strata` commands, wait until they serve, stop them by pid.

Every process a test starts is stopped here, by its own id, even when the test fails. Logs go to a
file per process so a failing test can show what the services said.
"""

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from services.app.ports import free_port
from services.app.service_process import ServiceProcess
from services.platform.auth import TOKEN_ENVIRONMENT_VARIABLE, ClusterSecurity
from services.platform.fast_blas import fast_blas_loaded
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

SESSION_CLUSTER_TOKEN = os.environ.setdefault(TOKEN_ENVIRONMENT_VARIABLE, secrets.token_urlsafe(32))
"""One cluster token for the whole test session, in this process's environment: every service a test
starts (each with its own STRATA_HOME) and every channel the test opens agree on it."""
__all__ = [
    "ServiceProcess",
    "cluster_state",
    "free_port",
    "start_coordinator",
    "start_lone_shards",
    "start_strata",
    "stopping",
    "wait_for_grpc_health",
    "wait_for_http_ok",
]


def start_strata(
    name: str,
    arguments: list[str],
    home: Path,
    log_dir: Path,
    *,
    session_token: bool = True,
    extra_environment: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """`strata ARGUMENTS` with its own STRATA_HOME; `session_token=False`: the token comes from the home
    (its cluster.token, created on first start), as on a real host. `extra_environment` is added last.
    Services start with HF_HUB_OFFLINE=1 unless `extra_environment` says otherwise."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name.replace(' ', '-')}.log"
    # Services compute with the BLAS this test process uses, so in-process references stay exact.
    blas = "fast" if fast_blas_loaded() else "reference"
    # HF_HUB_OFFLINE: no service a test starts reaches the real Hub (a fuzzed PullModel, say); a test of
    # pulls gives its fake Hub's HF_ENDPOINT and HF_HUB_OFFLINE=0.
    environment = {
        **os.environ,
        "STRATA_HOME": str(home),
        "STRATA_BLAS": blas,
        "HF_HUB_OFFLINE": "1",
        **(extra_environment or {}),
    }
    if not session_token:
        environment.pop(TOKEN_ENVIRONMENT_VARIABLE, None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.app.cli", *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    return ServiceProcess(name, process, log_path)


def start_coordinator(
    processes: list[ServiceProcess],
    home: Path,
    log_dir: Path,
    arguments: Sequence[str],
    *,
    extra_environment: Mapping[str, str] | None = None,
) -> str:
    """`strata coordinator --no-mdns ARGUMENTS` on a free loopback port, once it serves; returns its
    address. The process joins `processes` first, so the caller stops it even if it never serves."""
    address = f"127.0.0.1:{free_port()}"
    command = ["coordinator", "--no-mdns", "--port", address.rsplit(":", 1)[1], *arguments]
    processes.append(start_strata("coordinator", command, home, log_dir, extra_environment=extra_environment))
    wait_for_grpc_health(processes[-1], address)
    return address


def start_lone_shards(shards: list[ServiceProcess], count: int, home: Path, log_dir: Path) -> list[str]:
    """`count` shard servers in `home`, registered with a coordinator address nobody serves (the test
    assigns their stages itself); returns their addresses once each serves. Each process joins `shards`
    as it starts, so the caller stops them all even if one never serves."""
    unused_coordinator = f"127.0.0.1:{free_port()}"
    addresses: list[str] = []
    for index in range(count):
        port = free_port()
        arguments = ["shard", "--port", str(port), "--coordinator", unused_coordinator]
        shards.append(start_strata(f"shard-{index}", arguments, home, log_dir))
        addresses.append(f"127.0.0.1:{port}")
    for shard, address in zip(shards[-count:], addresses, strict=True):
        wait_for_grpc_health(shard, address)
    return addresses


@contextmanager
def stopping(processes: list[ServiceProcess]) -> Generator[None]:
    """Stops every process in `processes` (a list the block may still grow) when the block ends; when it
    ends with an error, prints each one's log tail first, so that a failure shows what the services said."""
    try:
        yield
    except BaseException:
        for process in processes:
            print(f"--- {process.name} ---\n{process.log_tail()}")
        raise
    finally:
        for process in processes:
            process.stop()


def cluster_state(
    address: str, security: ClusterSecurity | None = None, timeout_seconds: float = 10.0
) -> coordinator_pb2.ClusterState:
    """A coordinator's GetState reply; raises grpc.RpcError when it does not answer in time."""
    with cluster_sync_channel(address, security) as channel:
        return coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
            coordinator_pb2.GetStateRequest(), timeout=timeout_seconds
        )


def wait_for_grpc_health(service: ServiceProcess, address: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    with cluster_sync_channel(address) as channel:
        # The health stubs' typing lacks the methods; call the standard method by name.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
            try:
                reply: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{service.name} did not serve on {address}:\n{service.log_tail()}")


def wait_for_http_ok(service: ServiceProcess, url: str, timeout_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200:\n{service.log_tail()}")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    if not children_file.exists():
        return []
    return [int(part) for part in children_file.read_text().split()]


def pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    return "\nState:\tZ" not in status.read_text()
