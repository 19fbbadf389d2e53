"""Membership: bootstrap_expect's deterministic choice, and one change at a time (pure), plus the
PeerSet bootstrapping its node when no known peer belongs to a cluster yet."""

import asyncio
from pathlib import Path

import pytest

from coordinator.cluster_log import CLUSTER_LOG
from coordinator.membership_changes import promoted, with_learner, without_replica
from coordinator.raft.membership import PeerSet, choose_voters
from coordinator.raft.node import RaftNode
from coordinator.raft.peers import PeerClient
from coordinator.raft.storage import RaftStorage
from services.cluster.events import ReplicasConfigured
from tests.processes import free_port

pytestmark = pytest.mark.unit

ADDRESSES = ["127.0.0.1:7003", "127.0.0.1:7001", "127.0.0.1:7002"]
VOTERS = ("a:1", "b:1", "c:1")


def test_no_voters_until_enough_replicas_are_known() -> None:
    assert choose_voters(ADDRESSES[:2], expect=3) is None


def test_the_choice_does_not_depend_on_the_order_addresses_arrive_in() -> None:
    assert choose_voters(ADDRESSES, 3) == choose_voters(reversed(ADDRESSES), 3)
    assert choose_voters(ADDRESSES, 3) == ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003")


def test_extra_replicas_beyond_expect_are_left_out_the_same_way_everywhere() -> None:
    assert choose_voters([*ADDRESSES, "127.0.0.1:7000"], 3) == ("127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")


def test_a_new_replica_joins_as_a_learner_once() -> None:
    assert with_learner(VOTERS, (), "d:1") == ReplicasConfigured(voters=VOTERS, learners=("d:1",))
    assert with_learner(VOTERS, ("d:1",), "d:1") is None
    assert with_learner(VOTERS, (), "a:1") is None


def test_a_caught_up_learner_is_promoted_while_voters_are_below_the_target() -> None:
    assert promoted(("a:1", "b:1"), ("d:1",), "d:1", voter_target=3) == ReplicasConfigured(
        voters=("a:1", "b:1", "d:1"), learners=()
    )
    assert promoted(VOTERS, ("d:1",), "d:1", voter_target=3) is None
    assert promoted(("a:1",), ("d:1",), None, voter_target=3) is None


def test_a_dead_voter_is_removed_but_never_the_leader() -> None:
    assert without_replica(VOTERS, (), "c:1", leader="a:1") == ReplicasConfigured(voters=("a:1", "b:1"))
    assert without_replica(VOTERS, ("d:1",), "d:1", leader="a:1") == ReplicasConfigured(voters=VOTERS)
    assert "is the leader" in str(without_replica(VOTERS, (), "a:1", leader="a:1"))
    assert "not a replica" in str(without_replica(VOTERS, (), "z:1", leader="a:1"))


def test_a_peer_set_bootstraps_its_node_once_expect_is_known_and_no_cluster_exists(tmp_path: Path) -> None:
    me, first, second = (f"127.0.0.1:{free_port()}" for _ in range(3))
    node = RaftNode(me, RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient)
    peers = PeerSet(node, expect=3)
    peers.update([first, second])

    asyncio.run(asyncio.wait_for(peers.run(), timeout=30))

    assert node.voters == tuple(sorted([me, first, second]))
    assert RaftStorage(tmp_path, CLUSTER_LOG).hard_state.voters == node.voters


def test_a_formed_cluster_keeps_its_voters(tmp_path: Path) -> None:
    RaftNode("127.0.0.1:7002", RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient).bootstrap(
        ("127.0.0.1:7001", "127.0.0.1:7002")
    )

    node = RaftNode("127.0.0.1:7002", RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient)
    peers = PeerSet(node, expect=2)
    peers.update(["127.0.0.1:7000"])
    asyncio.run(asyncio.wait_for(peers.run(), timeout=30))

    assert node.voters == ("127.0.0.1:7001", "127.0.0.1:7002")


def test_a_lone_replica_bootstraps_at_once_and_keeps_its_log_when_its_port_changes(tmp_path: Path) -> None:
    first = RaftNode("127.0.0.1:7001", RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient)
    PeerSet(first, expect=1).update([])
    assert first.voters == ("127.0.0.1:7001",)

    node = RaftNode("127.0.0.1:7009", RaftStorage(tmp_path, CLUSTER_LOG), CLUSTER_LOG, PeerClient)
    PeerSet(node, expect=1).update([])

    assert node.voters == ("127.0.0.1:7009",)
