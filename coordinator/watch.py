"""What a WatchEvents subscriber gets next: the committed events from an index, or the snapshot
first when those events were compacted away."""

from coordinator.raft.node import RaftNode
from coordinator.raft.storage import CompactedError
from strata_wire import coordinator_pb2

BATCH = 256


def committed_after(node: RaftNode, next_index: int) -> list[coordinator_pb2.WatchedEvent]:
    """Committed (applied) events from `next_index` on, at most BATCH; a snapshot when behind it."""
    applied = node.state.last_index
    if next_index > applied:
        return []
    storage = node.storage
    try:
        entries = storage.entries_from(next_index, min(BATCH, applied - next_index + 1))
    except CompactedError:
        snapshot = storage.snapshot
        return [
            coordinator_pb2.WatchedEvent(
                index=snapshot.last_index, state_json=snapshot.state.model_dump_json().encode()
            )
        ]
    return [
        coordinator_pb2.WatchedEvent(index=entry.index, record_json=entry.record.model_dump_json().encode())
        for entry in entries
    ]
