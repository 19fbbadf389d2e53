"""A strata cluster over simulated hosts (tests/netns.py): each host runs its services with its own
STRATA_HOME, listening on its own address, finding the others by mDNS on that address only, or by a
static `--peer` list with multicast off. Clients and state probes run inside a host's namespace."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from services.kernel.settings import COORDINATOR_PORT, GATEWAY_PORT, SHARD_PORT, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.netns import NetnsHost, NetnsLab
from tests.processes import ServiceProcess


class StageSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    start_layer: int
    end_layer: int


class InstanceSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: str
    stages: tuple[StageSummary, ...]


class Summary(BaseModel):
    """What tests/discovery/state_probe.py prints."""

    model_config = ConfigDict(frozen=True)

    shards: tuple[str, ...]
    instances: tuple[InstanceSummary, ...]


@dataclass
class NetnsCluster:
    lab: NetnsLab
    cluster: str
    coordinator_host: NetnsHost
    static_peers: bool = False
    """True: `--no-mdns` and `--peer` addresses instead of multicast."""
    stopped: list[ServiceProcess] = field(default_factory=list[ServiceProcess])
    """Services the test stopped on purpose."""

    def stop(self, service: ServiceProcess) -> None:
        self.stopped.append(service)
        service.stop()

    @property
    def coordinator_address(self) -> str:
        return f"{self.coordinator_host.address}:{COORDINATOR_PORT}"

    def _discovery(self, host: NetnsHost, *, peers: bool) -> list[str]:
        common = ["--cluster", self.cluster, "--host", host.address]
        if not self.static_peers:
            return [*common, "--interface", host.address]
        return [*common, "--no-mdns", *(["--peer", self.coordinator_address] if peers else [])]

    def start_coordinator(self, minimum_shards: int) -> ServiceProcess:
        host = self.coordinator_host
        arguments = ["coordinator", *self._discovery(host, peers=False), "--model", EMBEDDED_MODEL_ID]
        return self.lab.start(host, "coordinator", [*arguments, "--min-shards", str(minimum_shards)])

    def start_shard(self, host: NetnsHost) -> ServiceProcess:
        return self.lab.start(host, "shard", ["shard", *self._discovery(host, peers=True)])

    def start_gateway(self, host: NetnsHost) -> ServiceProcess:
        return self.lab.start(host, "gateway", ["gateway", *self._discovery(host, peers=True)])

    def exited(self) -> str | None:
        for host in self.lab.hosts:
            for service in host.processes:
                if service.process.poll() is not None and service not in self.stopped:
                    return f"{service.name} exited with {service.process.returncode}"
        return None

    def state(self) -> Summary | None:
        probe = self.lab.run_python(
            self.coordinator_host, ["-m", "tests.discovery.state_probe", self.coordinator_address]
        )
        if probe.returncode != 0:
            return None
        return Summary.model_validate_json(probe.stdout)

    def wait_for_state(self, condition: Callable[[Summary], bool], what: str, seconds: float = 180.0) -> Summary:
        deadline = time.monotonic() + seconds
        last: Summary | None = None
        while time.monotonic() < deadline:
            problem = self.exited()
            if problem is not None:
                raise AssertionError(f"{problem} while waiting for {what}\n{self.lab.logs()}")
            last = self.state()
            if last is not None and condition(last):
                return last
            time.sleep(1.0)
        raise AssertionError(f"no {what} within {seconds:.0f} s; last state {last}\n{self.lab.logs()}")

    def ask(self, host: NetnsHost, seconds: float = 240.0) -> str:
        url = f"http://{host.address}:{GATEWAY_PORT}"
        reply = self.lab.run_python(host, ["-m", "tests.discovery.ask", url, str(seconds)], seconds + 30)
        if reply.returncode != 0:
            raise AssertionError(f"no answer: {reply.stdout}{reply.stderr}\n{self.lab.logs()}")
        return reply.stdout


def ready_stages(summary: Summary) -> tuple[StageSummary, ...]:
    """Stages of the ready instance, or () when none is ready."""
    for instance in summary.instances:
        if instance.status == "ready":
            return instance.stages
    return ()


def stage_addresses(summary: Summary) -> set[str]:
    return {stage.address for stage in ready_stages(summary)}


def weight_files(host: NetnsHost) -> set[str]:
    model_dir = models_root(host.home) / EMBEDDED_MODEL_ID
    if not model_dir.is_dir():
        return set()
    return {path.name for path in model_dir.glob("model*.safetensors")}


def shard_address(host: NetnsHost) -> str:
    return f"{host.address}:{SHARD_PORT}"
