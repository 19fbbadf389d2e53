"""The scale-out run of `make bench`: two one-core hosts against one, as network namespaces.

Simulated hosts (services/app/netns_lab.py) on one bridge, each with its own STRATA_HOME and address:
a control host (coordinator, gateway and load client) and two shard hosts. Every process is pinned
with `taskset`: shard host A to the first core; shard host B and the control host to the second, in
every run. Setup 1 starts a shard server on host A only; setups 2 and 3 on A and B (the coordinator
waits for both before placing): setup 2 pipelines one instance of the model over both, setup 3 keeps
one instance on each (`--instances 2`). Each setup runs once per round, in alternating order. Only the
control host has the model: shard hosts fetch their layers from it over the bridge, as real hosts
would. Services find each other by static `--peer` (no multicast).
"""

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from services.app.benchmark.report import ScaleOutRound
from services.app.netns_lab import NetnsHost, NetnsLab, namespace_problem
from services.kernel.ids import ModelId
from services.kernel.settings import COORDINATOR_PORT, GATEWAY_PORT, models_root
from services.platform.auth import TOKEN_ENVIRONMENT_VARIABLE, cluster_security, ensure_cluster_token

READY_TIMEOUT_SECONDS = 300.0
LOAD_TIMEOUT_SECONDS = 1200.0
REQUESTS_PER_SLOT = 4
"""Requests per concurrent slot at each level. With two waves, the end of the run weighed: the host
that finished its last requests first sat idle (16% of the wall time at 16) while the other drained."""


class LoadFigures(BaseModel):
    """What `python -m services.app.benchmark.load_client` prints."""

    model_config = ConfigDict(frozen=True, strict=True)

    output_throughput: float


def namespaces_unavailable() -> str | None:
    """Why the namespace run cannot happen here, or None."""
    if len(os.sched_getaffinity(0)) < 2:
        return "it needs two cores"
    return namespace_problem()


class _ScaleOutLab:
    def __init__(self, lab: NetnsLab, model_home: Path, model_id: ModelId, cores: tuple[int, int]) -> None:
        self.lab = lab
        self.model_id = model_id
        self.shard_core, self.control_core = cores
        self.control = lab.add_host("control")
        self.shard_hosts = (lab.add_host("shard-a"), lab.add_host("shard-b"))
        source = models_root(model_home) / model_id
        shutil.copytree(source, models_root(self.control.home) / model_id, copy_function=os.link)

    @property
    def coordinator(self) -> str:
        return f"{self.control.address}:{COORDINATOR_PORT}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.control.address}:{GATEWAY_PORT}"

    def _strata(self, host: NetnsHost, name: str, core: int, arguments: Sequence[str]) -> None:
        common = ["--host", host.address, "--no-mdns"]
        command = ["taskset", "-c", str(core), sys.executable, "-m", "services.app.cli", *arguments, *common]
        self.lab.spawn(host, name, command)

    def start(self, shards: int, instances: int, run: int) -> None:
        peers = ["--peer", self.coordinator]
        self._strata(
            self.control,
            f"coordinator-{run}",
            self.control_core,
            ["coordinator", "--model", self.model_id, "--min-shards", str(shards), "--instances", str(instances),
             "--fresh-state"],
        )  # fmt: skip
        for index, host in enumerate(self.shard_hosts[:shards]):
            core = self.shard_core if index == 0 else self.control_core
            self._strata(host, f"shard-{run}", core, ["shard", *peers])
        self._strata(self.control, f"gateway-{run}", self.control_core, ["gateway", *peers])

    def stop_all(self) -> None:
        for host in self.lab.hosts:
            for service in host.processes:
                service.stop()
            host.processes.clear()

    def load(self, concurrency: int, requests: int, max_tokens: int) -> float:
        arguments = [self.gateway_url, self.model_id, str(concurrency), str(requests), str(max_tokens)]
        command = ["taskset", "-c", str(self.control_core), sys.executable, "-m", "services.app.benchmark.load_client"]
        result = self.lab.run(self.control, [*command, *arguments], LOAD_TIMEOUT_SECONDS)
        if result.returncode != 0:
            raise RuntimeError(f"the load client failed: {result.stderr[-2000:]}")
        return LoadFigures.model_validate_json(result.stdout).output_throughput

    def ready_instances(self) -> int:
        command = [sys.executable, "-m", "services.app.benchmark.ready_instances", self.coordinator]
        result = self.lab.run(self.control, command, 60.0)
        return int(result.stdout) if result.returncode == 0 and result.stdout.strip().isdigit() else 0

    def wait_ready(self, instances: int) -> None:
        """Until `instances` are ready and one small completion succeeds (the coordinator places once
        every shard is there)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for host in self.lab.hosts:
                for service in host.processes:
                    if service.process.poll() is not None:
                        raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
            try:
                if self.ready_instances() >= instances:
                    self.load(1, 1, 4)
                    return
            except RuntimeError:
                pass
            time.sleep(2.0)
        raise RuntimeError(f"the cluster was not ready within {READY_TIMEOUT_SECONDS:.0f} s\n{self.lab.logs()}")


SETUPS = ((1, 1), (2, 1), (2, 2))
"""(shard hosts, instances): one one-core host; two with one instance pipelined over both; two with an
instance on each."""


def measure_scale_out_in_namespaces(
    model_home: Path, model_id: ModelId, concurrencies: tuple[int, ...], max_tokens: int, rounds: int = 2
) -> tuple[ScaleOutRound, ...]:
    """Every setup once per round; odd rounds run them in reverse order, so that a machine whose speed
    drifts during the run favours none of them."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    token = cluster_security().token or ensure_cluster_token(model_home)
    # The hosts' homes have no token file; a one-core host runs one BLAS thread.
    environment = {"OPENBLAS_NUM_THREADS": "1", TOKEN_ENVIRONMENT_VARIABLE: token}
    previous = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    results: list[ScaleOutRound] = []
    try:
        with tempfile.TemporaryDirectory(prefix="strata-scale-out-") as root, NetnsLab.create(Path(root)) as lab:
            hosts = _ScaleOutLab(lab, model_home, model_id, (first, second))
            for round_index in range(rounds):
                figures: ScaleOutRound = ({}, {}, {})
                order = list(enumerate(SETUPS))
                for setup_index, (shards, instances) in order[::-1] if round_index % 2 else order:
                    print(
                        f"scale-out in network namespaces, round {round_index + 1} of {rounds}: {shards} one-core "
                        f"shard host(s), {instances} instance(s)",
                        flush=True,
                    )
                    target = figures[setup_index]
                    run = round_index * len(SETUPS) + setup_index
                    hosts.start(shards, instances, run)
                    try:
                        hosts.wait_ready(instances)
                        for concurrency in concurrencies:
                            target[concurrency] = hosts.load(concurrency, REQUESTS_PER_SLOT * concurrency, max_tokens)
                            print(f"  concurrency {concurrency}: {target[concurrency]:.1f} tok/s", flush=True)
                    finally:
                        hosts.stop_all()
                results.append(figures)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return tuple(results)
