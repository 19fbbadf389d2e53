"""Simulated hosts for tests and `strata bench`: Linux network namespaces joined by a bridge, each with its own address.

    with NetnsLab.create(tmp_path) as lab:
        first = lab.add_host()                      # namespace, veth, 10.77.N.11/24, loopback up
        process = lab.start(first, "shard", [...])  # a `strata` command inside the namespace
        lab.set_link(first, up=False)               # partition: the host's cable is pulled
        lab.readdress(first)                        # the host comes back with a different address

The bridge lives in a namespace of its own (the "switch"), so nothing is added to the machine's real
network: no address, route or link in the root namespace, and the test subnet (10.77.N.0/24, N
random per run) exists only inside the namespaces this run created. Every name carries a random run
id, so parallel runs and leftovers never clash. `close()` (also on failure, via the context manager)
stops every process it started by pid, then deletes the namespaces, which deletes their links.

`namespace_problem()` says why namespaces cannot be created here (tests skip on it, except under
CI=true: see tests/netns.py).
"""

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.app.service_process import ServiceProcess

SUBNET_PREFIX = "10.77"
HOST_INTERFACE = "eth0"
COMMAND_TIMEOUT_SECONDS = 30.0
MAX_HOSTS = 40


@dataclass
class NetnsHost:
    """One simulated machine: a namespace with one link to the switch and its own STRATA_HOME."""

    name: str
    namespace: str
    switch_port: str
    """The switch-side end of the host's veth pair; taking it down partitions the host."""
    address: str
    home: Path
    processes: list[ServiceProcess] = field(default_factory=list[ServiceProcess])


def _ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *arguments], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=check
    )


def namespace_problem() -> str | None:
    """Why network namespaces cannot be used here, or None when one could be created and deleted."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"stprobe-{secrets.token_hex(4)}"
    try:
        created = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run `ip netns add`: {error}"
    if created.returncode != 0:
        return f"cannot create a network namespace: {created.stderr.strip() or 'ip netns add failed'}"
    _ip("netns", "delete", probe, check=False)
    return None


class NetnsLab:
    """A switch namespace with a bridge, and hosts plugged into it. Use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.run_id = secrets.token_hex(3)
        self.subnet = f"{SUBNET_PREFIX}.{secrets.randbelow(250) + 1}"
        self.root = root
        self.switch = f"st{self.run_id}-sw"
        self.bridge = "br0"
        self.hosts: list[NetnsHost] = []
        self._namespaces: list[str] = []
        self._next_address = 11

    @classmethod
    def create(cls, root: Path) -> "NetnsLab":
        lab = cls(root)
        try:
            lab._add_namespace(lab.switch)
            _ip("-n", lab.switch, "link", "add", lab.bridge, "type", "bridge", "mcast_snooping", "0")
            _ip("-n", lab.switch, "link", "set", lab.bridge, "up")
        except BaseException:
            lab.close()
            raise
        return lab

    def __enter__(self) -> "NetnsLab":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def _take_address(self) -> str:
        if self._next_address > 250:
            raise RuntimeError("the lab's subnet has no addresses left")
        address = f"{self.subnet}.{self._next_address}"
        self._next_address += 1
        return address

    def add_host(self, name: str | None = None) -> NetnsHost:
        """A new namespace plugged into the switch, with loopback up and a fresh address."""
        if len(self.hosts) >= MAX_HOSTS:
            raise RuntimeError(f"a lab holds at most {MAX_HOSTS} hosts")
        index = len(self.hosts) + 1
        host_name = name or f"host{index}"
        namespace = f"st{self.run_id}-h{index}"
        self._add_namespace(namespace)
        inner, outer = f"sth{self.run_id}{index}", f"sts{self.run_id}{index}"
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", namespace)
        _ip("link", "set", outer, "netns", self.switch)
        _ip("-n", namespace, "link", "set", inner, "name", HOST_INTERFACE)
        _ip("-n", self.switch, "link", "set", outer, "master", self.bridge)
        _ip("-n", self.switch, "link", "set", outer, "up")
        address = self._take_address()
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", HOST_INTERFACE)
        _ip("-n", namespace, "link", "set", HOST_INTERFACE, "up")
        # mDNS sends to 224.0.0.251: route multicast out of the host's only link.
        _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", HOST_INTERFACE)
        home = self.root / host_name
        home.mkdir(parents=True, exist_ok=True)
        host = NetnsHost(host_name, namespace, outer, address, home)
        self.hosts.append(host)
        return host

    def set_link(self, host: NetnsHost, *, up: bool) -> None:
        """Plugs the host's cable in or pulls it out (at the switch, as a partition would)."""
        _ip("-n", self.switch, "link", "set", host.switch_port, "up" if up else "down")

    def readdress(self, host: NetnsHost) -> str:
        """Gives the host a different address (as DHCP might after it comes back); returns it."""
        address = self._take_address()
        _ip("-n", host.namespace, "addr", "flush", "dev", HOST_INTERFACE)
        _ip("-n", host.namespace, "addr", "add", f"{address}/24", "dev", HOST_INTERFACE)
        _ip("-n", host.namespace, "route", "replace", "224.0.0.0/4", "dev", HOST_INTERFACE)
        host.address = address
        return address

    def command(self, host: NetnsHost, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the host's namespace."""
        return ["ip", "netns", "exec", host.namespace, *argv]

    def run(
        self, host: NetnsHost, argv: Sequence[str], timeout_seconds: float = COMMAND_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside the host and waits for it (bounded); never raises on its exit status."""
        environment = {**os.environ, "STRATA_HOME": str(host.home)}
        return subprocess.run(
            self.command(host, argv),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            env=environment,
        )

    def run_python(
        self, host: NetnsHost, arguments: Sequence[str], timeout_seconds: float = COMMAND_TIMEOUT_SECONDS
    ) -> subprocess.CompletedProcess[str]:
        return self.run(host, [sys.executable, *arguments], timeout_seconds)

    def start(self, host: NetnsHost, name: str, arguments: Sequence[str]) -> ServiceProcess:
        """Starts `strata ARGUMENTS` inside the host with its own STRATA_HOME; stopped by `close()`."""
        return self.spawn(host, name, [sys.executable, "-m", "services.app.cli", *arguments])

    def spawn(self, host: NetnsHost, name: str, command: Sequence[str]) -> ServiceProcess:
        """Starts any command inside the host, logging to a file; stopped by pid in `close()`."""
        log_dir = self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{host.name}-{name.replace(' ', '-')}.log"
        environment = {**os.environ, "STRATA_HOME": str(host.home)}
        # `ip netns exec` execs the command, so the pid is the service's own.
        argv = self.command(host, command)
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
        service = ServiceProcess(f"{host.name} {name}", process, log_path)
        host.processes.append(service)
        return service

    def logs(self) -> str:
        """Every service's log tail, for a failing test's message."""
        return "\n".join(
            f"--- {service.name} ---\n{service.log_tail()}" for host in self.hosts for service in host.processes
        )

    def close(self) -> None:
        """Stops every process by pid, then deletes every namespace (and with them every link)."""
        for host in self.hosts:
            for service in host.processes:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    service.stop()
        for namespace in reversed(self._namespaces):
            _ip("netns", "delete", namespace, check=False)
        self._namespaces.clear()
