"""Each host's memory as its shard servers last reported it with their registrations.

Kept beside the replicated state, not in it: free memory changes with every registration (every 2 s),
and committing it would fill the log. The replica a registration reaches (a follower passes it on, so
the leader hears every one) keeps the latest report per node; reports older than `STALE_SECONDS` (a
host whose shard servers all went) are dropped.
"""

import time
from dataclasses import dataclass

from services.kernel.ids import NodeId
from strata_wire import coordinator_pb2

STALE_SECONDS = 30.0


@dataclass(frozen=True)
class HostMemoryReport:
    total_bytes: int
    free_bytes: int
    reported_at: float


class HostMemoryTable:
    def __init__(self) -> None:
        self._reports: dict[NodeId, HostMemoryReport] = {}

    def record(self, request: coordinator_pb2.RegisterShardRequest) -> None:
        """Keeps the registration's host memory, when it carries one (older shard servers send none)."""
        if request.node_id and request.host_memory_total_bytes > 0:
            self._reports[NodeId(request.node_id)] = HostMemoryReport(
                total_bytes=request.host_memory_total_bytes,
                free_bytes=max(0, min(request.host_memory_free_bytes, request.host_memory_total_bytes)),
                reported_at=time.monotonic(),
            )

    def to_pb(self) -> list[coordinator_pb2.HostMemory]:
        now = time.monotonic()
        self._reports = {
            node: report for node, report in self._reports.items() if now - report.reported_at <= STALE_SECONDS
        }
        return [
            coordinator_pb2.HostMemory(node_id=node, total_bytes=report.total_bytes, free_bytes=report.free_bytes)
            for node, report in sorted(self._reports.items())
        ]
