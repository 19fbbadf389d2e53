"""Run inside a test's network namespace: asks one coordinator replica something, prints JSON.

    python -m tests.coordinator.netns_probe state HOST:PORT
    python -m tests.coordinator.netns_probe command HOST:PORT CLIENT_ID SEQUENCE TIMEOUT_SECONDS

`command` registers a made-up shard as command (CLIENT_ID, SEQUENCE) and reports whether a replica
acknowledged it before the timeout.
"""

import json
import sys
import time

import grpc

from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc


def state(address: str) -> dict[str, object]:
    with cluster_sync_channel(address) as channel:
        try:
            reply = coordinator_pb2_grpc.CoordinatorStub(channel).GetState(coordinator_pb2.GetStateRequest(), timeout=3)
        except grpc.RpcError as error:
            return {"error": str(error)}
    return {
        "leader": reply.leader,
        "role": reply.replicas[0].role if reply.replicas else "",
        "term": reply.replicas[0].term if reply.replicas else 0,
        "last_index": reply.last_index,
        "applied_commands": dict(reply.applied_commands),
        "shards": [shard.shard_id for shard in reply.shards],
        "log": committed_origins(address, reply.last_index),
    }


def committed_origins(address: str, through_index: int) -> list[list[object]]:
    """[client id, sequence] of every committed record that carries a command origin, in log order."""
    origins: list[list[object]] = []
    if through_index == 0:
        return origins
    with cluster_sync_channel(address) as channel:
        stream = coordinator_pb2_grpc.CoordinatorStub(channel).WatchEvents(
            coordinator_pb2.WatchEventsRequest(from_index=1), timeout=10
        )
        for watched in stream:
            if watched.record_json:
                origin = json.loads(watched.record_json).get("origin")
                if origin is not None:
                    origins.append([origin["client_id"], origin["sequence"]])
            if watched.index >= through_index:
                stream.cancel()
                break
    return origins


def command(address: str, client_id: str, sequence: int, timeout_seconds: float) -> dict[str, object]:
    request = coordinator_pb2.RegisterShardRequest(
        shard_id=f"{client_id}-{sequence}",
        node_id="made-up-node",
        address="127.0.0.1:9",
        available_memory_bytes=1000,
        device="cpu",
        client_id=client_id,
        sequence=sequence,
    )
    deadline = time.monotonic() + timeout_seconds
    last_error = ""
    while time.monotonic() < deadline:
        with cluster_sync_channel(address) as channel:
            try:
                coordinator_pb2_grpc.CoordinatorStub(channel).RegisterShard(request, timeout=3)
                return {"acknowledged": True}
            except grpc.RpcError as error:
                last_error = str(error)
        time.sleep(0.2)
    return {"acknowledged": False, "error": last_error}


def main(arguments: list[str]) -> int:
    match arguments:
        case ["state", address]:
            print(json.dumps(state(address)))
        case ["command", address, client_id, sequence, timeout]:
            print(json.dumps(command(address, client_id, int(sequence), float(timeout))))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
