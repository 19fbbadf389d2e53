"""What a service knows about a peer, and which peers it trusts.

The same facts travel in mDNS TXT records (txt_record.py) and in the `Peer.Identify` RPC
(identity_service.py), so both discovery modes produce identical `PeerInfo` values.
"""

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.kernel.ids import NodeId, ShardId

PROTOCOL_VERSION = 1
"""Bumped whenever a wire change stops old and new services from working together."""
COMPATIBLE_PROTOCOL_VERSIONS = frozenset({PROTOCOL_VERSION})
DEFAULT_CLUSTER = "strata"
SERVICE_TYPE = "_strata._tcp.local."

Role = Literal["gateway", "coordinator", "shard"]
ROLES: tuple[Role, ...] = ("gateway", "coordinator", "shard")


def parse_role(text: str) -> Role:
    """`text` as a Role; raises ValueError for anything else."""
    for role in ROLES:
        if role == text:
            return role
    raise ValueError(f"unknown role {text!r}")


class PeerInfo(BaseModel):
    """One running service as its announcement describes it."""

    model_config = ConfigDict(frozen=True, strict=True)

    cluster: str
    role: Role
    node_id: NodeId
    protocol_version: int
    address: str
    """host:port where it listens (gRPC; HTTP for a gateway)."""
    total_memory_bytes: int = 0
    available_memory_bytes: int = 0
    """Shards: what the host offers the cluster, shared by the shard servers of one node (`host_share`)."""
    device: str = ""
    models: tuple[str, ...] = ()
    work_per_second: float = 0.0
    """Shards: parameters per second measured at start (services.platform.compute_device); 0: unknown."""

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def shard_id(self) -> ShardId:
        """The id a shard server registers under (node id and port), as shard_server.main builds it."""
        return ShardId(f"{self.node_id}:{self.port}")


class RefusedPeer(BaseModel):
    """A peer of this cluster that is not trusted, and why (shown in logs and state)."""

    model_config = ConfigDict(frozen=True, strict=True)

    address: str
    node_id: NodeId
    reason: str


def host_share(shard: PeerInfo, shards: Iterable[PeerInfo]) -> int:
    """A shard's part of its host's memory: the smallest figure its node's shards announce, split evenly."""
    same_host = [peer for peer in shards if peer.node_id == shard.node_id and peer.address != shard.address]
    host_memory = min([shard.available_memory_bytes, *(peer.available_memory_bytes for peer in same_host)])
    return host_memory // (1 + len(same_host))


def refusal_reason(peer: PeerInfo) -> str | None:
    """Why a peer of our cluster must not join, or None when it may."""
    if peer.protocol_version not in COMPATIBLE_PROTOCOL_VERSIONS:
        return (
            f"protocol version {peer.protocol_version} is incompatible with this service's version "
            f"{PROTOCOL_VERSION} (compatible: {sorted(COMPATIBLE_PROTOCOL_VERSIONS)}); upgrade one of them"
        )
    return None


def split_address(address: str) -> tuple[str, int]:
    """`host:port` as (host, port); raises ValueError when malformed."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port_text)
