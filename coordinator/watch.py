"""What a WatchEvents subscriber gets next: the committed events from an index, or the snapshot
first when those events were compacted away."""

from collections.abc import Sequence

from coordinator.cluster_log import ClusterLogEntry, ClusterNode, ClusterSnapshot
from coordinator.raft.storage import CompactedError

BATCH = 256


def committed_after(node: ClusterNode, next_index: int) -> Sequence[ClusterLogEntry | ClusterSnapshot]:
    """Committed (applied) events from `next_index` on, at most BATCH; a snapshot when behind it."""
    applied = node.state.last_index
    if next_index > applied:
        return []
    storage = node.storage
    try:
        entries = storage.entries_from(next_index, min(BATCH, applied - next_index + 1))
    except CompactedError:
        return [storage.snapshot]
    return entries
