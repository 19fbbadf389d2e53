"""A real local cluster from `strata run` (coordinator, two shard servers, gateway as separate
processes on 127.0.0.1) serving the embedded SmolLM2, shared by the system tests of a session. It runs
in a private home sharing the store of `embedded_home` (tests/fixtures.py)."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.kernel.settings import home_sharing_models
from tests.processes import ServiceProcess, cluster_state, free_port, start_strata, wait_for_http_ok


@dataclass(frozen=True)
class RunningCluster:
    home: Path
    process: ServiceProcess
    gateway_url: str
    coordinator_address: str
    shard_addresses: tuple[str, ...]
    instance_id: str


def start_local_cluster(home: Path, logs: Path, extra_arguments: Sequence[str] = ()) -> tuple[ServiceProcess, str, str]:
    gateway_port, coordinator_port, shard_port = free_port(), free_port(), free_port(consecutive=2)
    arguments = [
        "run",
        "--port",
        str(gateway_port),
        "--coordinator-port",
        str(coordinator_port),
        "--shard-port",
        str(shard_port),
        *extra_arguments,
    ]
    process = start_strata("strata-run", arguments, home, logs)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    wait_for_http_ok(process, f"{gateway_url}/health", timeout_seconds=180)
    return process, gateway_url, f"127.0.0.1:{coordinator_port}"


@pytest.fixture(scope="session")
def running_cluster(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    with home_sharing_models(embedded_home) as home:
        yield from serve_local_cluster(home, tmp_path_factory.mktemp("cluster-logs"))


def serve_local_cluster(home: Path, logs: Path, extra_arguments: Sequence[str] = ()) -> Iterator[RunningCluster]:
    """`strata run [EXTRA_ARGUMENTS]` in `home` until the generator closes; its log tail is printed when it
    fails to start."""
    process, gateway_url, coordinator_address = start_local_cluster(home, logs, extra_arguments)
    try:
        state = cluster_state(coordinator_address)
        instance = next(instance for instance in state.instances if instance.status == "ready")
        yield RunningCluster(
            home=home,
            process=process,
            gateway_url=gateway_url,
            coordinator_address=coordinator_address,
            shard_addresses=tuple(stage.address for stage in instance.stages),
            instance_id=instance.instance_id,
        )
    except BaseException:
        print(process.log_tail())
        raise
    finally:
        process.stop()
