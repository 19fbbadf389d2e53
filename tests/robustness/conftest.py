"""One real cluster for the robustness tests: coordinator, two shard servers and a gateway as separate
processes on 127.0.0.1, serving the embedded SmolLM2 with a small admission limit (one running
request, one waiting), so that overload is easy to reach and the refusals are deterministic."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.kernel.settings import home_sharing_models
from services.models.embedded_model import EMBEDDED_MODEL_ID
from strata_wire import coordinator_pb2
from tests.processes import (
    ServiceProcess,
    cluster_state,
    free_port,
    start_strata,
    stopping,
    wait_for_grpc_health,
    wait_for_http_ok,
)

ADMISSION_ARGUMENTS = ["--max-active-requests", "1", "--admission-queue", "1", "--admission-wait", "60"]
LOCAL = ["--no-mdns", "--host", "127.0.0.1"]
COORDINATOR_ARGUMENTS = ["--model", EMBEDDED_MODEL_ID, "--min-shards", "2", "--fresh-state"]


@dataclass(frozen=True)
class OverloadCluster:
    gateway_url: str
    coordinator_address: str
    shard_addresses: tuple[str, ...]
    """In ring order: the first shard admits requests."""
    instance_id: str
    processes: tuple[ServiceProcess, ...]

    def exited(self) -> str | None:
        for process in self.processes:
            if process.process.poll() is not None:
                return f"{process.name} exited with {process.process.returncode}:\n{process.log_tail()}"
        return None


def _ready_instance(coordinator: str) -> coordinator_pb2.ModelInstance | None:
    state = cluster_state(coordinator)
    return next((instance for instance in state.instances if instance.status == "ready"), None)


@pytest.fixture(scope="session")
def overload_cluster(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverloadCluster]:
    with home_sharing_models(embedded_home) as home:
        yield from _serve(home, tmp_path_factory.mktemp("overload-logs"))


def _serve(home: Path, logs: Path) -> Iterator[OverloadCluster]:
    coordinator_port, gateway_port = free_port(), free_port()
    shard_ports = [free_port(), free_port()]
    coordinator = f"127.0.0.1:{coordinator_port}"
    processes: list[ServiceProcess] = []
    with stopping(processes):
        processes.append(
            start_strata(
                "coordinator",
                ["coordinator", *LOCAL, "--port", str(coordinator_port), *COORDINATOR_ARGUMENTS],
                home,
                logs,
            )
        )
        wait_for_grpc_health(processes[0], coordinator)
        for index, port in enumerate(shard_ports):
            arguments = ["shard", *LOCAL, "--port", str(port), "--coordinator", coordinator, *ADMISSION_ARGUMENTS]
            processes.append(start_strata(f"shard-{index}", arguments, home, logs))
        processes.append(
            start_strata(
                "gateway", ["gateway", *LOCAL, "--port", str(gateway_port), "--coordinator", coordinator], home, logs
            )
        )
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_for_http_ok(processes[-1], f"{gateway_url}/health", timeout_seconds=240)
        instance = _ready_instance(coordinator)
        assert instance is not None, "the gateway is healthy but no instance is ready"
        yield OverloadCluster(
            gateway_url=gateway_url,
            coordinator_address=coordinator,
            shard_addresses=tuple(stage.address for stage in instance.stages),
            instance_id=instance.instance_id,
            processes=tuple(processes),
        )
