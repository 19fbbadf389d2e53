"""Durable Raft storage: what was written comes back after a restart; compaction bounds the log."""

from pathlib import Path

import pytest

from coordinator.cluster_log import CLUSTER_LOG
from coordinator.raft.storage import LOG_FILE, CompactedError, HardState, LogEntry, RaftStorage, Snapshot, encode_entry
from services.cluster.events import IndexedEvent, ShardRegistered
from services.cluster.state import ClusterState
from tests.coordinator.builders import shard_server

pytestmark = pytest.mark.unit


def entry(index: int, term: int = 1) -> LogEntry[IndexedEvent]:
    return LogEntry(term=term, record=IndexedEvent(index=index, event=ShardRegistered(shard=shard_server(f"s{index}"))))


def test_a_new_folder_is_empty(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path / "coordinator", CLUSTER_LOG)

    assert (storage.last_index, storage.last_term, storage.hard_state) == (0, 0, HardState())


def test_entries_and_hard_state_survive_a_restart(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(1), entry(2, term=2)])
    storage.save_hard_state(HardState(current_term=2, voted_for="a:1", voters=("a:1", "b:1")))

    again = RaftStorage(tmp_path, CLUSTER_LOG)

    assert again.entries_from(1, 10) == [entry(1), entry(2, term=2)]
    assert again.hard_state == HardState(current_term=2, voted_for="a:1", voters=("a:1", "b:1"))
    assert (again.last_index, again.last_term, again.term_at(1)) == (2, 2, 1)


def test_an_entry_must_follow_the_last_one(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(1)])

    with pytest.raises(ValueError, match="entry 3 cannot follow 1"):
        storage.append([entry(3)])


def test_a_torn_last_line_is_dropped_on_load(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(1), entry(2)])
    with (tmp_path / LOG_FILE).open("a") as log:
        log.write(encode_entry(entry(3), CLUSTER_LOG)[:25])

    assert RaftStorage(tmp_path, CLUSTER_LOG).last_index == 2


def test_truncation_drops_the_suffix_durably(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(1), entry(2), entry(3)])

    storage.truncate_from(2)
    storage.append([entry(2, term=3)])

    assert RaftStorage(tmp_path, CLUSTER_LOG).entries_from(1, 10) == [entry(1), entry(2, term=3)]


def test_a_snapshot_replaces_the_entries_it_covers(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(index) for index in range(1, 6)])
    state = ClusterState(last_index=3)

    storage.save_snapshot(Snapshot(last_index=3, last_term=1, state=state))
    again = RaftStorage(tmp_path, CLUSTER_LOG)

    assert again.snapshot == Snapshot(last_index=3, last_term=1, state=state)
    assert again.entries_from(4, 10) == [entry(4), entry(5)]
    assert (again.entry_count, again.last_index, again.term_at(3)) == (2, 5, 1)
    with pytest.raises(CompactedError):
        again.entries_from(3, 1)


def test_a_snapshot_that_disagrees_with_the_log_drops_all_of_it(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    storage.append([entry(1), entry(2)])

    storage.save_snapshot(Snapshot(last_index=2, last_term=7, state=ClusterState(last_index=2)))

    assert (storage.entry_count, storage.last_index, storage.last_term) == (0, 2, 7)


def test_regular_snapshots_keep_the_file_bounded(tmp_path: Path) -> None:
    storage = RaftStorage(tmp_path, CLUSTER_LOG)
    sizes: list[int] = []
    for index in range(1, 401):
        storage.append([entry(index)])
        if index % 50 == 0:
            storage.save_snapshot(Snapshot(last_index=index, last_term=1, state=ClusterState(last_index=index)))
            sizes.append((tmp_path / LOG_FILE).stat().st_size)

    assert max(sizes) == 0
    assert RaftStorage(tmp_path, CLUSTER_LOG).last_index == 400
