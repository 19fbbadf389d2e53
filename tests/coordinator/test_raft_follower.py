"""A follower's handling of AppendEntries and InstallSnapshot, driven in memory (no network)."""

from pathlib import Path

import pytest

from coordinator.cluster_log import CLUSTER_LOG
from coordinator.raft.messages import AppendRequest, SnapshotRequest
from coordinator.raft.node import RaftNode
from coordinator.raft.peers import PeerClient
from coordinator.raft.rules import VoteRequest
from coordinator.raft.storage import LogEntry, RaftStorage, Snapshot
from services.cluster.events import IndexedEvent, ShardRegistered, TermStarted
from services.cluster.state import ClusterState
from tests.coordinator.builders import shard_server

pytestmark = pytest.mark.unit

VOTERS = ("a:1", "b:1", "c:1")


def entry(index: int, term: int) -> LogEntry[IndexedEvent]:
    event = TermStarted(term=term, leader="a:1") if index == 1 else ShardRegistered(shard=shard_server(f"s{index}"))
    return LogEntry(term=term, record=IndexedEvent(index=index, event=event))


def append(
    term: int, prev: int, prev_term: int, entries: list[LogEntry[IndexedEvent]], commit: int, leader: str = "a:1"
) -> AppendRequest[IndexedEvent]:
    return AppendRequest(term, leader, prev, prev_term, tuple(entries), commit, VOTERS)


def follower(tmp_path: Path) -> RaftNode[ClusterState, IndexedEvent]:
    return RaftNode("b:1", RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient)


def test_entries_are_stored_and_applied_up_to_the_leader_commit(tmp_path: Path) -> None:
    node = follower(tmp_path)

    reply = node.handle_append_entries(append(1, 0, 0, [entry(1, 1), entry(2, 1), entry(3, 1)], commit=2))

    assert (reply.success, reply.last_log_index) == (True, 3)
    assert (node.commit_index, node.state.last_index, node.leader_id, node.voters) == (2, 2, "a:1", VOTERS)
    assert RaftStorage(tmp_path, CLUSTER_LOG).last_index == 3


def test_a_gap_is_refused_with_where_to_resume(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_append_entries(append(1, 0, 0, [entry(1, 1)], commit=0))

    reply = node.handle_append_entries(append(1, 5, 1, [entry(6, 1)], commit=0))

    assert (reply.success, reply.last_log_index) == (False, 1)


def test_a_conflicting_uncommitted_suffix_is_replaced(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_append_entries(append(1, 0, 0, [entry(1, 1), entry(2, 1), entry(3, 1)], commit=1))

    reply = node.handle_append_entries(append(2, 1, 1, [entry(2, 2)], commit=2, leader="c:1"))

    assert reply.success
    assert [stored.term for stored in RaftStorage(tmp_path, CLUSTER_LOG).entries_from(1, 10)] == [1, 2]
    assert node.state.last_index == 2


def test_an_older_term_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_append_entries(append(3, 0, 0, [entry(1, 3)], commit=1))

    reply = node.handle_append_entries(append(2, 1, 3, [entry(2, 2)], commit=2, leader="c:1"))

    assert (reply.success, reply.term, node.leader_id, node.state.last_index) == (False, 3, "a:1", 1)


def test_a_follower_that_hears_its_leader_refuses_votes(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_append_entries(append(1, 0, 0, [entry(1, 1)], commit=1))

    term, granted = node.handle_request_vote(VoteRequest(term=5, candidate_id="c:1", last_log_index=9, last_log_term=4))

    assert (term, granted) == (1, False)


def test_a_vote_is_durable(tmp_path: Path) -> None:
    node = follower(tmp_path)

    term, granted = node.handle_request_vote(VoteRequest(term=2, candidate_id="c:1", last_log_index=0, last_log_term=0))

    assert (term, granted) == (2, True)
    hard = RaftStorage(tmp_path, CLUSTER_LOG).hard_state
    assert (hard.current_term, hard.voted_for) == (2, "c:1")


def test_a_pre_vote_is_answered_without_touching_the_term_or_the_vote(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_request_vote(VoteRequest(term=2, candidate_id="a:1", last_log_index=0, last_log_term=0))

    term, granted = node.handle_request_vote(
        VoteRequest(term=7, candidate_id="c:1", last_log_index=0, last_log_term=0, pre_vote=True)
    )

    assert (term, granted) == (2, True)
    hard = RaftStorage(tmp_path, CLUSTER_LOG).hard_state
    assert (hard.current_term, hard.voted_for) == (2, "a:1")


def test_a_snapshot_replaces_state_and_log(tmp_path: Path) -> None:
    node = follower(tmp_path)
    node.handle_append_entries(append(1, 0, 0, [entry(1, 1), entry(2, 1)], commit=1))
    state = ClusterState(term=2, leader="a:1", last_index=40, applied_commands={"client": 9})

    node.handle_install_snapshot(SnapshotRequest(2, "a:1", Snapshot(last_index=40, last_term=2, state=state), VOTERS))

    assert (node.state, node.commit_index) == (state, 40)
    restarted = RaftStorage(tmp_path, CLUSTER_LOG)
    assert (restarted.snapshot.state, restarted.entry_count, restarted.last_index) == (state, 0, 40)
    reply = node.handle_append_entries(append(2, 40, 2, [entry(41, 2)], commit=41))
    assert reply.success
    assert node.state.last_index == 41
