"""Coordinator replicas as real `strata coordinator` processes, and a client that sends commands.

Each replica has its own STRATA_HOME (its own log on disk) and listens on 127.0.0.1. Every process
started here is stopped by its pid in `stop_all`, which tests call in a `finally`.
"""

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.cluster.events import IndexedEvent
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc
from tests.processes import ServiceProcess, cluster_state, free_port, start_strata, wait_for_grpc_health

CALL_TIMEOUT_SECONDS = 3.0
PAUSE_BETWEEN_COMMANDS_SECONDS = 0.02
"""Leaves the two cores some room; commands still overlap every kill and election."""
WHOLE_LOG = ("--snapshot-every", "1000000")
"""For tests that read every replica's whole log back."""


@dataclass
class ReplicaSet:
    root: Path
    ports: list[int]
    expect: int
    extra_arguments: tuple[str, ...] = ()
    processes: dict[int, ServiceProcess] = field(default_factory=dict[int, ServiceProcess])

    @classmethod
    def create(
        cls, root: Path, count: int, extra_arguments: tuple[str, ...] = (), expect: int | None = None
    ) -> "ReplicaSet":
        """`count` replica ports; each replica waits for `expect` (default: all of them) to bootstrap."""
        return cls(root, [free_port() for _ in range(count)], expect or count, extra_arguments)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def live(self) -> list[int]:
        return [number for number, process in self.processes.items() if process.process.poll() is None]

    def start(self, number: int, peers_of: list[str] | None = None) -> None:
        """Starts replica `number`, told of `peers_of` (default: every replica of the set)."""
        known = self.addresses if peers_of is None else peers_of
        peers = [argument for address in known for argument in ("--peer", address)]
        arguments = [
            "coordinator",
            "--no-mdns",
            "--port",
            str(self.ports[number]),
            "--expect",
            str(self.expect),
            *peers,
        ]
        self.processes[number] = start_strata(
            f"replica-{number}", [*arguments, *self.extra_arguments], self.root / f"home-{number}", self.root / "logs"
        )

    def start_all(self) -> None:
        """Starts every replica back to back (the bootstrap race), then waits until each serves."""
        for number in range(len(self.ports)):
            self.start(number)
        for number in range(len(self.ports)):
            self.wait_serving(number)

    def wait_serving(self, number: int) -> None:
        wait_for_grpc_health(self.processes[number], self.addresses[number], timeout_seconds=60)

    def kill(self, number: int) -> None:
        """kill -9: no goodbye, no flush; what the replica acknowledged must already be on disk."""
        self.processes[number].stop(signal.SIGKILL)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(25)}" for p in self.processes.values())


def get_state(address: str) -> coordinator_pb2.ClusterState | None:
    """The coordinator's state, or None when it does not answer (down, or not serving yet)."""
    try:
        return cluster_state(address, timeout_seconds=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError:
        return None


def wait_for_leader(replicas: ReplicaSet, timeout_seconds: float = 60.0, other_than: str = "") -> int:
    """The number of the replica that leads with every live replica following it."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        states = {number: get_state(replicas.addresses[number]) for number in replicas.live()}
        leaders = {number for number, state in states.items() if state and state.replicas[0].role == "leader"}
        followed = {state.leader for state in states.values() if state is not None}
        if len(leaders) == 1 and all(states.values()):
            leader = leaders.pop()
            address = replicas.addresses[leader]
            if followed == {address} and address != other_than:
                return leader
        time.sleep(0.2)
    raise TimeoutError(f"no single leader within {timeout_seconds}s:\n{replicas.logs()}")


def wait_until_converged(replicas: ReplicaSet, timeout_seconds: float = 60.0) -> list[coordinator_pb2.ClusterState]:
    """Waits until every live replica has applied the same last index; returns their states."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        states = [get_state(replicas.addresses[number]) for number in replicas.live()]
        present = [state for state in states if state is not None]
        if len(present) == len(states) and len({state.last_index for state in present}) == 1:
            return present
        time.sleep(0.2)
    raise TimeoutError(f"replicas did not converge within {timeout_seconds}s:\n{replicas.logs()}")


def committed_records(address: str, through_index: int, timeout_seconds: float = 30.0) -> list[IndexedEvent]:
    """Every committed record from index 1 through `through_index`, read with WatchEvents."""
    records: list[IndexedEvent] = []
    with cluster_sync_channel(address) as channel:
        stream = coordinator_pb2_grpc.CoordinatorStub(channel).WatchEvents(
            coordinator_pb2.WatchEventsRequest(from_index=1), timeout=timeout_seconds
        )
        for watched in stream:
            if watched.state_json:
                raise AssertionError(f"{address} answered from a snapshot at {watched.index}; the log was compacted")
            records.append(IndexedEvent.model_validate_json(watched.record_json))
            if watched.index >= through_index:
                stream.cancel()
                break
    return records


def effective_sequences(records: list[IndexedEvent], client_id: str) -> list[int]:
    """The client's command sequences in the order they took effect (retries that applied nothing left out)."""
    applied: list[int] = []
    for record in records:
        origin = record.origin
        if origin is not None and origin.client_id == client_id and origin.sequence > (applied[-1] if applied else 0):
            applied.append(origin.sequence)
    return applied


def assert_logs_agree(replicas: ReplicaSet, client: "CommandClient") -> None:
    """Every live replica applied the same log; each acknowledged command took effect exactly once."""
    states = wait_until_converged(replicas)
    last_index = states[0].last_index
    logs = [committed_records(replicas.addresses[number], last_index) for number in replicas.live()]
    assert all(log == logs[0] for log in logs), "replicas applied different logs"
    effective = effective_sequences(logs[0], client.client_id)
    assert effective == sorted(set(effective)), "a command applied twice or out of order"
    assert set(client.acknowledged) <= set(effective), "an acknowledged command was lost"
    assert set(effective) <= set(client.acknowledged) | set(client.unacknowledged)
    shard_orders = [[shard.shard_id for shard in state.shards] for state in states]
    assert all(order == shard_orders[0] for order in shard_orders)
    assert all(dict(state.applied_commands) == dict(states[0].applied_commands) for state in states)


class CommandClient(threading.Thread):
    """Sends commands 1, 2, 3, ... (each registers a made-up shard), retrying one command with the
    same sequence number at every replica in turn until one acknowledges it or its deadline passes."""

    def __init__(self, client_id: str, addresses: list[str], command_deadline_seconds: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.client_id = client_id
        self._addresses = addresses
        self._command_deadline = command_deadline_seconds
        self.acknowledged: list[int] = []
        self.unacknowledged: list[int] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def acknowledged_count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def run(self) -> None:
        for sequence in range(1, 100_000):
            if self.stopping.is_set():
                return
            acknowledged = self._send(sequence)
            with self._lock:
                (self.acknowledged if acknowledged else self.unacknowledged).append(sequence)
            time.sleep(PAUSE_BETWEEN_COMMANDS_SECONDS)

    def wait_for_acknowledged(self, count: int, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while self.acknowledged_count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.acknowledged_count()} of {count} commands acknowledged")
            time.sleep(0.05)

    def _send(self, sequence: int) -> bool:
        request = coordinator_pb2.RegisterShardRequest(
            shard_id=f"{self.client_id}-{sequence}",
            node_id="made-up-node",
            address="127.0.0.1:9",
            available_memory_bytes=1000 + sequence,
            device="cpu",
            client_id=self.client_id,
            sequence=sequence,
        )
        deadline = time.monotonic() + self._command_deadline
        attempt = 0
        while time.monotonic() < deadline and not self.stopping.is_set():
            address = self._addresses[attempt % len(self._addresses)]
            attempt += 1
            with cluster_sync_channel(address) as channel:
                try:
                    coordinator_pb2_grpc.CoordinatorStub(channel).RegisterShard(request, timeout=CALL_TIMEOUT_SECONDS)
                    return True
                except grpc.RpcError:
                    time.sleep(0.1)
        return False
