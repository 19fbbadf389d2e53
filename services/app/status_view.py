"""What `strata status` shows: a pure function of a coordinator's `GetState` reply, as rich tables.

`status_view(state)` builds the renderable (hosts with their memory, device and services; model
instances with their layer ranges; leader, term and replicas with their log positions; downloads from
the Hub; refused peers);
`render_status(state)` is the same as plain text, which tests read without a cluster or a terminal.
A host is a node id (one `STRATA_HOME`); a coordinator replica is placed on the node whose shard
servers share its IP address, or on a host of its own when none does.
"""

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from strata_wire import coordinator_pb2

PLAIN_WIDTH = 200
"""Columns of `render_status`'s text (and of output to a pipe): wide enough that no cell wraps."""


@dataclass
class _Host:
    name: str
    addresses: list[str] = field(default_factory=list[str])
    memory_bytes: int = 0
    devices: list[str] = field(default_factory=list[str])
    services: list[str] = field(default_factory=list[str])


def _ip(address: str) -> str:
    return address.rsplit(":", 1)[0]


def _gib(memory_bytes: int) -> str:
    return f"{memory_bytes / 2**30:.2f}"


def _metrics(address: str) -> str:
    return f" (metrics {address})" if address else ""


def _hosts(state: coordinator_pb2.ClusterState) -> list[_Host]:
    hosts: dict[str, _Host] = {}
    node_of_ip: dict[str, str] = {}
    for shard in sorted(state.shards, key=lambda shard: (shard.node_id, shard.shard_id)):
        host = hosts.setdefault(shard.node_id, _Host(shard.node_id))
        ip = _ip(shard.address)
        node_of_ip.setdefault(ip, shard.node_id)
        if ip not in host.addresses:
            host.addresses.append(ip)
        host.memory_bytes += shard.available_memory_bytes
        if shard.device and shard.device not in host.devices:
            host.devices.append(shard.device)
        host.services.append(f"shard server {shard.address}{_metrics(shard.metrics_address)}")
    for replica in state.replicas:
        ip = _ip(replica.replica_id)
        node = node_of_ip.get(ip)
        if node is None:  # a coordinator-only host: it announces no node facts, only its address
            node = f"({ip})"
            hosts.setdefault(node, _Host(node, addresses=[ip]))
        hosts[node].services.append(
            f"coordinator {replica.replica_id} {replica.role}{_metrics(replica.metrics_address)}"
        )
    return list(hosts.values())


def _table(title: str, header: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in header:
        table.add_column(column, overflow="fold")
    return table


def _summary(state: coordinator_pb2.ClusterState) -> Text:
    text = Text()
    text.append("leader: ", style="bold")
    text.append(state.leader or "(none)", style="green" if state.leader else "red")
    text.append("   term: ", style="bold")
    text.append(str(state.term))
    text.append("   applied index: ", style="bold")
    text.append(str(state.last_index))
    text.append("   models: ", style="bold")
    text.append(", ".join(state.model_ids) or "(none)")
    return text


def _hosts_table(state: coordinator_pb2.ClusterState) -> Table:
    table = _table("hosts", ("HOST", "ADDRESS", "MEMORY GiB", "USED/FREE GiB", "DEVICE", "SERVICES"))
    memory = {report.node_id: report for report in state.host_memory}
    for host in _hosts(state):
        report = memory.get(host.name)
        table.add_row(
            host.name,
            ", ".join(host.addresses),
            _gib(host.memory_bytes) if host.memory_bytes else "",
            f"{_gib(report.total_bytes - report.free_bytes)}/{_gib(report.free_bytes)}" if report else "",
            ", ".join(host.devices),
            "\n".join(host.services),
        )
    return table


def _shards_table(state: coordinator_pb2.ClusterState) -> Table:
    columns = (
        "SHARD",
        "NODE",
        "ADDRESS",
        "MEMORY GiB",
        "DEVICE",
        "SPEED Gparam/s",
        "METRICS",
        "FETCHED MiB (peers / hub)",
    )
    table = _table("shard servers", columns)
    for shard in sorted(state.shards, key=lambda shard: (shard.node_id, shard.shard_id)):
        memory = _gib(shard.available_memory_bytes)
        speed = f"{shard.work_per_second / 1e9:.1f}" if shard.work_per_second > 0 else "-"
        fetched = f"{_mib(shard.fetched_bytes_from_peers)} / {_mib(shard.fetched_bytes_from_hub)}"
        table.add_row(
            shard.shard_id, shard.node_id, shard.address, memory, shard.device, speed, shard.metrics_address, fetched
        )
    return table


def _mib(byte_count: int) -> str:
    return f"{byte_count / 2**20:.1f}"


_STATUS_STYLES = {"ready": "green", "loaded": "green", "loading": "yellow", "assigned": "yellow", "failed": "red"}


def _instances_table(state: coordinator_pb2.ClusterState) -> Table:
    table = _table("model instances", ("INSTANCE", "MODEL", "STATUS", "LAYERS (shard [start, end) stage status)"))
    for instance in state.instances:
        status = Text(instance.status, style=_STATUS_STYLES.get(instance.status, ""))
        if instance.message:
            status.append(f": {instance.message}")
        stages = "\n".join(
            f"{stage.shard_id} [{stage.start_layer}, {stage.end_layer}) {stage.status}".rstrip()
            for stage in instance.stages
        )
        table.add_row(instance.instance_id, instance.model_id, status, stages)
    return table


def _replicas_table(state: coordinator_pb2.ClusterState) -> Table:
    table = _table("coordinator replicas", ("REPLICA", "ROLE", "TERM", "LOG INDEX", "COMMIT", "METRICS"))
    voters, learners = set(state.voters), set(state.learners)
    for replica in state.replicas:
        role = replica.role + (" (learner)" if replica.replica_id in learners else "")
        table.add_row(
            replica.replica_id,
            Text(role, style="green bold" if replica.role == "leader" else ""),
            str(replica.term),
            str(replica.log_index),
            str(replica.commit_index) if replica.commit_index else "",
            replica.metrics_address,
        )
    listed = {replica.replica_id for replica in state.replicas}
    for missing in sorted((voters | learners) - listed):  # members the answering replica has no view of
        table.add_row(missing, "learner" if missing in learners else "voter", "", "", "", "")
    return table


def _eta(seconds: float) -> str:
    return "" if seconds < 0 else f"{seconds:.0f} s"


def _pulls_table(state: coordinator_pb2.ClusterState) -> Table:
    table = _table("downloads", ("PULL", "REPOSITORY", "MODEL", "NODE", "STATE", "DONE/TOTAL GiB", "MiB/s", "ETA"))
    for pull in state.pulls:
        status = Text(pull.state, style=_STATUS_STYLES.get("ready" if pull.state == "done" else pull.state, "yellow"))
        if pull.error:
            status.append(f": {pull.error}")
        table.add_row(
            pull.pull_id,
            f"{pull.repository}@{pull.revision}",
            pull.model_id,
            pull.node_id,
            status,
            f"{_gib(pull.bytes_done)}/{_gib(pull.bytes_total)}",
            f"{pull.bytes_per_second / 2**20:.1f}",
            _eta(pull.eta_seconds),
        )
    return table


def _refused_table(state: coordinator_pb2.ClusterState) -> Table:
    table = _table("refused peers (never joined)", ("ADDRESS", "NODE", "REASON"))
    for peer in state.refused_peers:
        table.add_row(peer.address, peer.node_id, peer.reason)
    return table


def status_view(state: coordinator_pb2.ClusterState) -> Group:
    """Every section of `strata status` for `state`, in reading order."""
    tables = [_hosts_table(state), _shards_table(state), _instances_table(state), _replicas_table(state)]
    if state.pulls:
        tables.append(_pulls_table(state))
    if state.refused_peers:
        tables.append(_refused_table(state))
    sections: list[RenderableType] = [_summary(state), *(Padding(table, (1, 0, 0, 0)) for table in tables)]
    return Group(*sections)


def plain_console(width: int = PLAIN_WIDTH) -> Console:
    """A console that writes uncoloured text of a fixed width into a buffer (`console.file`)."""
    return Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, highlight=False)


def render_status(state: coordinator_pb2.ClusterState, width: int = PLAIN_WIDTH) -> str:
    """`status_view(state)` as plain text, lines stripped of trailing spaces."""
    console = plain_console(width)
    console.print(status_view(state))
    buffer = console.file
    assert isinstance(buffer, io.StringIO)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
