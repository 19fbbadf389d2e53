"""The `Peer` gRPC service every strata gRPC server adds: answers `Identify` with its own `PeerInfo`.

Static peers (`--peer host:port`) learn role and resources this way instead of from mDNS TXT records.
"""

from collections.abc import Callable

import grpc

from discovery.peer import PeerInfo, parse_role
from services.kernel.ids import NodeId
from strata_wire import discovery_pb2, discovery_pb2_grpc

PEER_SERVICE_NAME = discovery_pb2.DESCRIPTOR.services_by_name["Peer"].full_name


def peer_to_pb(peer: PeerInfo) -> discovery_pb2.PeerIdentity:
    return discovery_pb2.PeerIdentity(
        cluster=peer.cluster,
        role=peer.role,
        node_id=peer.node_id,
        protocol_version=peer.protocol_version,
        address=peer.address,
        total_memory_bytes=peer.total_memory_bytes,
        available_memory_bytes=peer.available_memory_bytes,
        device=peer.device,
        models=list(peer.models),
        work_per_second=peer.work_per_second,
    )


def peer_from_pb(identity: discovery_pb2.PeerIdentity, address: str) -> PeerInfo:
    """The peer that answered at `address` (the address we reached it at, not the one it believes)."""
    return PeerInfo(
        cluster=identity.cluster,
        role=parse_role(identity.role),
        node_id=NodeId(identity.node_id),
        protocol_version=identity.protocol_version,
        address=address,
        total_memory_bytes=identity.total_memory_bytes,
        available_memory_bytes=identity.available_memory_bytes,
        device=identity.device,
        models=tuple(identity.models),
        work_per_second=identity.work_per_second,
    )


class PeerService(discovery_pb2_grpc.PeerServicer):
    def __init__(self, identity: Callable[[], PeerInfo]) -> None:
        self._identity = identity

    async def Identify(
        self, request: discovery_pb2.IdentifyRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> discovery_pb2.PeerIdentity:
        return peer_to_pb(self._identity())


def add_peer_service(server: grpc.aio.Server, identity: Callable[[], PeerInfo]) -> None:
    discovery_pb2_grpc.add_PeerServicer_to_server(PeerService(identity), server)
