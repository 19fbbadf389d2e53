"""What a WatchEvents subscriber gets next: the committed events from an index, or the snapshot
first when those events were compacted away."""

from collections.abc import Sequence

from coordinator.raft.node import RaftNode
from coordinator.raft.storage import CompactedError, LogEntry, Snapshot

BATCH = 256


def committed_after(node: RaftNode, next_index: int) -> Sequence[LogEntry | Snapshot]:
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
