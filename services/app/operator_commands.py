"""Operator commands over gRPC: `strata status`, `strata drain NODE`, `strata cluster remove-replica ID`.

What `strata status` shows is services/app/status_view.py (pure, over the GetState reply) and how it is
printed services/app/status_command.py; this module fetches the state.
"""

import sys
import time

import grpc

from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

CALL_TIMEOUT_SECONDS = 5.0


def fetch_status(address: str) -> coordinator_pb2.ClusterState:
    """The state from `address`; the replica list from the leader when `address` is a follower."""
    with cluster_sync_channel(address) as channel:
        state = coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
            coordinator_pb2.GetStateRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
    if state.leader and state.leader != address:
        try:
            with cluster_sync_channel(state.leader) as channel:
                leader_view = coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
                    coordinator_pb2.GetStateRequest(), timeout=CALL_TIMEOUT_SECONDS
                )
            del state.replicas[:]
            state.replicas.extend(leader_view.replicas)
        except grpc.RpcError:
            pass  # the leader is unreachable from here: show this replica's own view
    return state


def remove_replica(coordinator: str, replica_id: str) -> int:
    """`strata cluster remove-replica`: prints the new membership, or why not; returns the exit status."""
    with cluster_sync_channel(coordinator) as channel:
        try:
            reply = coordinator_pb2_grpc.CoordinatorStub(channel).RemoveReplica(
                coordinator_pb2.RemoveReplicaRequest(replica_id=replica_id), timeout=CALL_TIMEOUT_SECONDS * 4
            )
        except grpc.RpcError as error:
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            print(f"strata cluster remove-replica: {details}", file=sys.stderr)
            return 1
    print(f"voters: {', '.join(reply.voters)}")
    if reply.learners:
        print(f"learners: {', '.join(reply.learners)}")
    return 0


def drain_node(coordinator: str, node_id: str, timeout_seconds: float) -> int:
    """`strata drain NODE`: asks for the drain, then waits until no instance uses the node."""
    with cluster_sync_channel(coordinator) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            stub.DrainNode(coordinator_pb2.DrainNodeRequest(node_id=node_id), timeout=CALL_TIMEOUT_SECONDS * 4)
        except grpc.RpcError as error:
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            print(f"strata drain: {details}", file=sys.stderr)
            return 1
        print(f"draining {node_id}: placing its instances elsewhere", flush=True)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                state = stub.GetState(coordinator_pb2.GetStateRequest(), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.RpcError:
                time.sleep(1.0)
                continue
            if not instances_on_node(state, node_id):
                print(f"{node_id} is drained: no model instance uses it; it can be stopped")
                return 0
            time.sleep(1.0)
    print(f"strata drain: {node_id} still serves after {timeout_seconds:.0f}s; see `strata status`", file=sys.stderr)
    return 1


def instances_on_node(state: coordinator_pb2.ClusterState, node_id: str) -> list[str]:
    """Ids of the instances with a stage on a shard server of `node_id`."""
    shards = {shard.shard_id for shard in state.shards if shard.node_id == node_id}
    return [
        instance.instance_id
        for instance in state.instances
        if any(stage.shard_id in shards for stage in instance.stages)
    ]
