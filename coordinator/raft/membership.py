"""Membership: bootstrap like Consul's bootstrap_expect, then one change at a time through the log.

A fresh replica first asks the replicas it knows whether a cluster already exists: if one does, it
asks to join as a learner; if none does and `expect` replicas are known, every replica picks the same
sorted `expect` voters, so replicas starting at once never form two clusters. Discovery (static
--peer lists today, mDNS) feeds addresses through `PeerSet.update`. The changes themselves are records
of the state machine (the coordinator's: coordinator/membership_changes.py).
"""

import asyncio
import logging
from collections.abc import Iterable
from typing import Generic

import grpc

from coordinator.raft.node import RaftNode
from coordinator.raft.state_machine import R, S
from services.platform.grpc_server import cluster_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

logger = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0


def choose_voters(known: Iterable[str], expect: int) -> tuple[str, ...] | None:
    """The first `expect` replica ids in sorted order once that many are known, else None."""
    ordered = sorted(set(known))
    if len(ordered) < expect:
        return None
    return tuple(ordered[:expect])


def caught_up_learner(node: RaftNode[S, R]) -> str | None:
    """As leader: a learner holding every committed entry, ready to be promoted."""
    for learner in node.learners:
        if node.match_index(learner) >= node.commit_index:
            return learner
    return None


class PeerSet(Generic[S, R]):
    """Replica addresses this replica knows of; bootstraps or joins a cluster once it can."""

    def __init__(self, node: RaftNode[S, R], expect: int) -> None:
        self._node = node
        self._expect = expect
        self._known: set[str] = {node.replica_id}

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)

    def update(self, addresses: Iterable[str]) -> None:
        """Adds peer addresses (host:port); safe to call again with the same or more addresses."""
        self._known |= set(addresses)
        if self._node.voters and self._expect == 1 and self._known == {self._node.replica_id}:
            self._node.rebind_lone_voter()
        elif not self._node.voters and self._expect == 1 and self._known == {self._node.replica_id}:
            self._node.bootstrap((self._node.replica_id,))  # a cluster of one has nobody to ask

    async def run(self) -> None:
        """Until this replica belongs to a cluster: join an existing one, or bootstrap a new one."""
        while not self._node.voters and not self._node.leader_id:
            others = sorted(self._known - {self._node.replica_id})
            answers = await asyncio.gather(*(self._probe(peer) for peer in others))
            formed = [(peer, voters) for peer, voters in zip(others, answers, strict=True) if voters]
            including_me = [voters for _, voters in formed if self._node.replica_id in voters]
            if including_me:
                self._node.bootstrap(including_me[0])  # a peer bootstrapped first, with us among its voters
                return
            if formed:
                await self._ask_to_join(formed[0][0])
            else:
                voters = choose_voters(self._known, self._expect)
                if voters is not None:
                    self._node.bootstrap(voters)
                    return
                logger.info("waiting for %d replicas, %d known", self._expect, len(self._known))
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def _probe(self, peer: str) -> tuple[str, ...]:
        """The voters `peer` belongs to (empty when it is not in a cluster yet or unreachable)."""
        async with cluster_channel(peer) as channel:
            try:
                state = await coordinator_pb2_grpc.CoordinatorStub(channel).GetState(
                    coordinator_pb2.GetStateRequest(), timeout=PROBE_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError:
                return ()
        return tuple(state.voters)

    async def _ask_to_join(self, peer: str) -> None:
        async with cluster_channel(peer) as channel:
            try:
                await coordinator_pb2_grpc.CoordinatorStub(channel).JoinCluster(
                    coordinator_pb2.JoinClusterRequest(replica_id=self._node.replica_id), timeout=PROBE_TIMEOUT_SECONDS
                )
                logger.info("asked %s to join its cluster as a learner", peer)
            except grpc.aio.AioRpcError as error:
                logger.info("cannot join through %s yet: %s", peer, error.details())
