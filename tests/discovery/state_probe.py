"""Print a coordinator's cluster state as JSON, for tests that reach it only from inside a namespace.

`python -m tests.discovery.state_probe HOST:PORT` prints {"shards": [...], "instances": [...]} or exits 1.
"""

import json
import sys

import grpc

from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc


def main() -> int:
    try:
        with cluster_sync_channel(sys.argv[1]) as channel:
            state = coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
                coordinator_pb2.GetStateRequest(), timeout=10
            )
    except grpc.RpcError as error:
        print(error)
        return 1
    summary = {
        "shards": sorted(shard.address for shard in state.shards),
        "instances": [
            {
                "status": instance.status,
                "stages": [
                    {"address": stage.address, "start_layer": stage.start_layer, "end_layer": stage.end_layer}
                    for stage in instance.stages
                ],
            }
            for instance in state.instances
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
