"""A follower's Coordinator service passes a leader-only command on to the leader once, marked
forwarded, and hands back its reply or its status; it refuses with UNAVAILABLE when there is no
leader to pass it to (unknown, itself, or the command was already passed on). The leader is a real
in-process server on 127.0.0.1; the follower's replica is a stand-in that always refuses."""

import asyncio
from typing import cast

import grpc
import pytest

from coordinator.raft.interface import NotLeaderError
from coordinator.replica import CoordinatorReplica
from coordinator.service import CoordinatorService
from services.cluster.state import ClusterState
from services.kernel.ids import NodeId
from services.kernel.status_errors import NotFoundError, StatusError, UnavailableError
from services.platform.grpc_server import GrpcServer
from strata_wire import coordinator_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

OWN_ID = "127.0.0.1:1"


class _Node:
    replica_id = OWN_ID


class _Follower:
    """A replica that is not the leader; `leader` is where it believes the leader is."""

    node = _Node()

    def __init__(self, leader: str) -> None:
        self.leader = leader

    async def drain_node(self, node_id: NodeId) -> ClusterState:
        raise NotLeaderError(self.leader)


class _Leader:
    """The leader's DrainNode only."""

    def __init__(self) -> None:
        self.received: list[coordinator_pb2.DrainNodeRequest] = []

    async def DrainNode(
        self, request: coordinator_pb2.DrainNodeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> coordinator_pb2.DrainNodeReply:
        self.received.append(request)
        if request.node_id == "unknown":
            raise NotFoundError("no shard server of node 'unknown' is registered")
        return coordinator_pb2.DrainNodeReply(draining_nodes=[request.node_id])


def _follower_service(leader: str) -> CoordinatorService:
    return CoordinatorService(cast(CoordinatorReplica, _Follower(leader)))


def _context() -> grpc.aio.ServicerContext[object, object]:
    return cast(grpc.aio.ServicerContext[object, object], None)  # the service never touches it here


@pytest.mark.parametrize(
    ("leader", "forwarded"), [("", False), (OWN_ID, False), ("127.0.0.1:2", True)], ids=["unknown", "self", "again"]
)
def test_no_leader_to_pass_it_to_is_unavailable(leader: str, forwarded: bool) -> None:
    service = _follower_service(leader)
    request = coordinator_pb2.DrainNodeRequest(node_id="n1", forwarded=forwarded)
    with pytest.raises(UnavailableError) as refused:
        asyncio.run(service.DrainNode(request, _context()))
    assert refused.value.message == f"no leader with a live lease here; leader: {leader!r}"


def test_a_follower_passes_the_command_on_once_and_relays_the_reply_or_status() -> None:
    async def scenario() -> None:
        leader = _Leader()
        server = GrpcServer("127.0.0.1", 0, [])
        drain = grpc.unary_unary_rpc_method_handler(
            leader.DrainNode,
            request_deserializer=coordinator_pb2.DrainNodeRequest.FromString,
            response_serializer=coordinator_pb2.DrainNodeReply.SerializeToString,
        )
        service_name = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
        server.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service_name, {"DrainNode": drain}),)
        )
        await server.start()
        address = f"127.0.0.1:{server.port}"
        try:
            service = _follower_service(address)
            request = coordinator_pb2.DrainNodeRequest(node_id="n1")
            reply = await service.DrainNode(request, _context())
            assert list(reply.draining_nodes) == ["n1"]
            assert [(sent.node_id, sent.forwarded) for sent in leader.received] == [("n1", True)]
            assert not request.forwarded  # the caller's request is left as it was

            with pytest.raises(StatusError) as relayed:
                await service.DrainNode(coordinator_pb2.DrainNodeRequest(node_id="unknown"), _context())
            assert relayed.value.status_name == "NOT_FOUND"
            assert relayed.value.message == f"leader {address}: no shard server of node 'unknown' is registered"
        finally:
            await server.stop(0)

    asyncio.run(scenario())
