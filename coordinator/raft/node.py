"""A Raft-lite replica at runtime: roles, elections, replication, commit and apply.

The decisions come from rules.py; durability from storage.py; what is replicated from the state
machine it is given (state_machine.py: it applies records and builds the node's own); this module
wires them to a clock, asyncio tasks and peers. Every coroutine runs on one event loop, so state only
changes between awaits; after each await the code re-checks that the term and role it started with
still hold.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Generic, Literal

from coordinator.raft import rules
from coordinator.raft.interface import DEFAULT_TIMINGS, NotLeaderError, PeerConnector, RaftPeer, RaftTimings
from coordinator.raft.messages import AppendReply, AppendRequest, SnapshotRequest
from coordinator.raft.replication import replicate_to
from coordinator.raft.state_machine import R, S, StateMachine
from coordinator.raft.storage import HardState, LogEntry, RaftStorage, Snapshot

logger = logging.getLogger(__name__)

Role = Literal["follower", "candidate", "leader"]
TICK_SECONDS = 0.05


class RaftNode(Generic[S, R]):
    def __init__(
        self,
        replica_id: str,
        storage: RaftStorage[S, R],
        machine: StateMachine[S, R],
        connect_peer: PeerConnector[S, R],
        timings: RaftTimings = DEFAULT_TIMINGS,
        snapshot_every: int = 1000,
    ) -> None:
        """`machine` is what the log replicates (its records, the states they apply to); `storage`
        keeps them with the same codec. `connect_peer` opens the transport to a peer replica (gRPC in
        a coordinator: PeerClient)."""
        self._replica_id = replica_id
        self._connect_peer = connect_peer
        self._storage = storage
        self._machine = machine
        self._timings = timings
        self._snapshot_every = snapshot_every
        self._role: Role = "follower"
        self._leader_id = ""
        self._state: S = storage.snapshot.state
        self._commit_index = storage.snapshot.last_index
        self._last_heard_leader = float("-inf")
        self._election_deadline = self._next_election_deadline()
        self._peers: dict[str, RaftPeer[S, R]] = {}
        self._next_index: dict[str, int] = {}
        self._match_index: dict[str, int] = {}
        self._acked_send_time: dict[str, float] = {}
        self._wake_peer: dict[str, asyncio.Event] = {}
        self._pending: dict[int, tuple[int, asyncio.Future[S]]] = {}
        self._leader_tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    # ---- what the replica and the services read

    @property
    def replica_id(self) -> str:
        return self._replica_id

    @property
    def state(self) -> S:
        return self._state

    @property
    def machine(self) -> StateMachine[S, R]:
        return self._machine

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> str:
        return self._leader_id

    @property
    def current_term(self) -> int:
        return self._storage.hard_state.current_term

    @property
    def voters(self) -> tuple[str, ...]:
        return self._storage.hard_state.voters

    @property
    def learners(self) -> tuple[str, ...]:
        return self._state.learners

    @property
    def commit_index(self) -> int:
        return self._commit_index

    @property
    def storage(self) -> RaftStorage[S, R]:
        return self._storage

    def match_index(self, replica: str) -> int:
        """As leader: the last index `replica` has fsynced, as far as this leader knows."""
        return self._match_index.get(replica, 0)

    def leads_with_lease(self) -> bool:
        """Leader, lease live and this term's first entry applied: safe to take commands and act."""
        return (
            self._role == "leader"
            and time.monotonic() < self._lease_expiry()
            and self._state.term == self.current_term
            and self._state.leader == self.replica_id
        )

    async def wait_for_change(self, timeout_seconds: float) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_seconds)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- lifecycle

    def bootstrap(self, voters: tuple[str, ...]) -> None:
        """Fixes the voting members of a new cluster; a cluster already formed keeps its own."""
        if not self.voters:
            logger.info("bootstrapping with voters %s", ", ".join(voters))
            self._save(voters=voters)
            if voters == (self.replica_id,):
                self._election_deadline = time.monotonic()  # alone: no one to wait for

    def rebind_lone_voter(self) -> None:
        """A cluster of one whose address changed (say, another port) is still the same replica:
        its folder holds the log. Only safe because no other voter exists to disagree."""
        if len(self.voters) == 1 and self.voters[0] != self.replica_id:
            logger.info("this lone replica moved from %s to %s", self.voters[0], self.replica_id)
            self._save(voters=(self.replica_id,))
            self._election_deadline = time.monotonic()

    def start(self) -> None:
        if self.voters == (self.replica_id,):
            self._election_deadline = time.monotonic()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        tasks = [*self._leader_tasks.values(), *([self._ticker] if self._ticker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for peer in self._peers.values():
            await peer.close()

    # ---- commands

    async def propose(self, record_at: Callable[[int], R]) -> S:
        """Appends the record `record_at` builds for the next index, returns the state once a majority
        has it fsynced and it is applied."""
        if not self.leads_with_lease():
            raise NotLeaderError("" if self._role == "leader" else self._leader_id)
        future: asyncio.Future[S] = asyncio.get_running_loop().create_future()
        # Registered first: with a single voter the entry commits inside _append_own.
        self._pending[self._storage.last_index + 1] = (self.current_term, future)
        self._append_own([record_at])
        return await future

    def _append_own(self, records_at: list[Callable[[int], R]]) -> None:
        """Appends entries of this leader's term (fsynced), wakes the followers, commits what it can;
        each record is built for the index it gets."""
        first = self._storage.last_index + 1
        self._storage.append(
            [
                LogEntry(term=self.current_term, record=record_at(first + offset))
                for offset, record_at in enumerate(records_at)
            ]
        )
        self._match_index[self.replica_id] = self._storage.last_index
        for wake in self._wake_peer.values():
            wake.set()
        self._advance_commit()

    # ---- RPC handlers

    def handle_request_vote(self, request: rules.VoteRequest) -> tuple[int, bool]:
        now = time.monotonic()
        hears_leader = (self._role == "follower" and self._leader_id != "") and (
            now - self._last_heard_leader < self._timings.election_timeout_seconds[0]
        )
        leads = self._role == "leader" and now < self._lease_expiry()
        view = rules.VoterView(
            current_term=self.current_term,
            voted_for=self._storage.hard_state.voted_for,
            last_log_index=self._storage.last_index,
            last_log_term=self._storage.last_term,
            hears_live_leader=hears_leader or leads,
        )
        decision = rules.decide_vote(view, request)
        if request.pre_vote:
            return self.current_term, decision.granted
        if decision.term > self.current_term:
            self._become_follower(decision.term, leader="")
        self._save(term=decision.term, voted_for=decision.voted_for)
        if decision.granted:
            self._election_deadline = self._next_election_deadline()
        return self.current_term, decision.granted

    def handle_append_entries(self, request: AppendRequest[R]) -> AppendReply:
        if request.term < self.current_term:
            return AppendReply(self.current_term, False, self._storage.last_index)
        self._hear_from_leader(request.term, request.leader_id, request.voters)
        storage = self._storage
        base = storage.snapshot
        prev_index, prev_term = request.prev_log_index, request.prev_log_term
        entries = list(request.entries)
        if prev_index < base.last_index:
            # Entries up to our snapshot are committed, hence the same as the leader's: skip them.
            entries = [entry for entry in entries if entry.index > base.last_index]
            prev_index, prev_term = base.last_index, base.last_term
        if prev_index > storage.last_index or storage.term_at(prev_index) != prev_term:
            return AppendReply(self.current_term, False, min(storage.last_index, max(prev_index - 1, 0)))
        new_entries: list[LogEntry[R]] = []
        for entry in entries:
            if new_entries or entry.index > storage.last_index:
                new_entries.append(entry)
            elif storage.term_at(entry.index) != entry.term:
                storage.truncate_from(entry.index)  # a deposed leader's uncommitted suffix
                new_entries.append(entry)
        storage.append(new_entries)
        verified = prev_index + len(entries)
        if request.leader_commit > self._commit_index:
            self._commit_index = max(self._commit_index, min(request.leader_commit, verified))
            self._apply_committed()
        return AppendReply(self.current_term, True, storage.last_index)

    def handle_install_snapshot(self, request: SnapshotRequest[S]) -> int:
        if request.term < self.current_term:
            return self.current_term
        self._hear_from_leader(request.term, request.leader_id, request.voters)
        snapshot = request.snapshot
        if snapshot.last_index <= self._commit_index:
            return self.current_term
        logger.info("installing the leader's snapshot at index %d", snapshot.last_index)
        self._storage.save_snapshot(snapshot)
        self._state = snapshot.state
        self._commit_index = snapshot.last_index
        self._adopt_configuration()
        self._notify()
        return self.current_term

    def _hear_from_leader(self, term: int, leader_id: str, voters: tuple[str, ...]) -> None:
        if term > self.current_term or self._role != "follower":
            self._become_follower(term, leader_id)
        if self._leader_id != leader_id:
            logger.info("following leader %s in term %d", leader_id, term)
            self._leader_id = leader_id
            self._notify()
        self._last_heard_leader = time.monotonic()
        self._election_deadline = self._next_election_deadline()
        if voters and not self.voters:
            self._save(voters=voters)  # a learner joining: the log's membership entries take over

    # ---- roles

    def _save(
        self,
        *,
        term: int | None = None,
        voted_for: str | Literal["keep"] | None = "keep",
        voters: tuple[str, ...] | None = None,
    ) -> None:
        hard = self._storage.hard_state
        self._storage.save_hard_state(
            HardState(
                current_term=hard.current_term if term is None else term,
                voted_for=hard.voted_for if voted_for == "keep" else voted_for,
                voters=hard.voters if voters is None else voters,
            )
        )

    def _next_election_deadline(self) -> float:
        low, high = self._timings.election_timeout_seconds
        return time.monotonic() + random.uniform(low, high)

    def _become_follower(self, term: int, leader: str) -> None:
        if term > self.current_term:
            self._save(term=term, voted_for=None)
        if self._role != "follower":
            logger.info("stepping down to follower in term %d", term)
        self._role = "follower"
        self._leader_id = leader
        for task in self._leader_tasks.values():
            task.cancel()
        self._leader_tasks = {}
        self._wake_peer = {}
        for index, (_, future) in list(self._pending.items()):
            if not future.done():
                # May still commit under the next leader: the client retries with the same sequence.
                future.set_exception(NotLeaderError(leader))
            del self._pending[index]
        self._notify()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            if self.replica_id not in self.voters:
                continue
            if self._role == "leader":
                if now >= self._lease_expiry() and len(self.voters) > 1:
                    logger.warning("lease expired without a majority's acknowledgement; stepping down")
                    self._become_follower(self.current_term, leader="")
                continue
            if now >= self._election_deadline:
                await self._run_election()

    async def _run_election(self) -> None:
        self._election_deadline = self._next_election_deadline()
        # The pre-vote round: would a majority elect us in the next term? Asking takes no term, so a
        # replica no majority would elect (one restarted, or cut off, while a leader holds its lease)
        # leaves every term as it is.
        would_grant = await self._poll_voters(
            rules.VoteRequest(
                self.current_term + 1,
                self.replica_id,
                self._storage.last_index,
                self._storage.last_term,
                pre_vote=True,
            )
        )
        if would_grant is None or not rules.won_election(would_grant, self.voters):
            return
        term = self.current_term + 1
        self._role = "candidate"
        self._leader_id = ""
        self._save(term=term, voted_for=self.replica_id)
        self._election_deadline = self._next_election_deadline()
        logger.info("starting an election for term %d", term)
        granted = await self._poll_voters(
            rules.VoteRequest(term, self.replica_id, self._storage.last_index, self._storage.last_term)
        )
        if granted is None:
            return
        if rules.won_election(granted, self.voters):
            self._become_leader()
        else:
            self._role = "follower"

    async def _poll_voters(self, request: rules.VoteRequest) -> set[str] | None:
        """Asks every other voter; those that granted, this replica included. None when a leader or a
        newer term turned up meanwhile (a reply with a newer term makes this replica follow it)."""
        term, role, heard = self.current_term, self._role, self._last_heard_leader
        others = [voter for voter in self.voters if voter != self.replica_id]
        replies = await asyncio.gather(*(self._peer(voter).request_vote(request) for voter in others))
        if (self.current_term, self._role, self._last_heard_leader) != (term, role, heard):
            return None
        granted = {self.replica_id}
        for voter, reply in zip(others, replies, strict=True):
            if reply is None:
                continue
            reply_term, vote_granted = reply
            if reply_term > term:
                self._become_follower(reply_term, leader="")
                return None
            if vote_granted:
                granted.add(voter)
        return granted

    def _become_leader(self) -> None:
        logger.info("elected leader for term %d", self.current_term)
        self._role = "leader"
        self._leader_id = self.replica_id
        self._match_index = {}
        self._next_index = {}
        self._acked_send_time = {self.replica_id: time.monotonic()}
        self._sync_replication()
        # Raft's rule: commit an entry of our own term first; it also commits what earlier terms left.
        machine = self._machine
        first: list[Callable[[int], R]] = [
            partial(machine.term_started, term=self.current_term, leader=self.replica_id)
        ]
        if self._state.voters != self.voters:
            # After a bootstrap (or a lone replica's new address) the membership goes into the log, so
            # snapshots and later replicas carry it. Appended together, so both apply in one batch.
            first.append(partial(machine.configured, voters=self.voters, learners=self._state.learners))
        self._append_own(first)
        self._notify()

    def _sync_replication(self) -> None:
        """As leader: one replication task per other voter and learner, none for replicas removed."""
        targets = {replica for replica in (*self.voters, *self.learners) if replica != self.replica_id}
        for gone in set(self._leader_tasks) - targets:
            self._leader_tasks.pop(gone).cancel()
            self._wake_peer.pop(gone, None)
        for replica in targets - set(self._leader_tasks):
            self._match_index[replica] = 0
            self._next_index[replica] = self._storage.last_index + 1
            self._acked_send_time.setdefault(replica, float("-inf"))
            self._wake_peer[replica] = asyncio.Event()
            self._leader_tasks[replica] = asyncio.create_task(replicate_to(self, replica, self.current_term))

    def _adopt_configuration(self) -> None:
        """Membership takes effect when its entry is applied, one change at a time (as etcd does)."""
        voters = self._state.voters
        if not voters or voters == self.voters:
            if self._role == "leader":
                self._sync_replication()
            return
        logger.info("voters are now %s; learners %s", ", ".join(voters), ", ".join(self.learners) or "none")
        self._save(voters=voters)
        if self._role == "leader":
            if self.replica_id not in voters:
                self._become_follower(self.current_term, leader="")
            else:
                self._sync_replication()

    def _lease_expiry(self) -> float:
        acked = {**self._acked_send_time, self.replica_id: time.monotonic()}
        return rules.lease_expiry(acked, self.voters, self._timings.lease_seconds)

    # ---- what replication reports (replication.py)

    def _peer(self, voter: str) -> RaftPeer[S, R]:
        if voter not in self._peers:
            self._peers[voter] = self._connect_peer(voter, self._timings.rpc_timeout_seconds, self._machine)
        return self._peers[voter]

    @property
    def heartbeat_seconds(self) -> float:
        return self._timings.heartbeat_seconds

    def leader_view(self, voter: str) -> tuple[RaftPeer[S, R], int, asyncio.Event]:
        return self._peer(voter), self._next_index[voter], self._wake_peer[voter]

    def record_ack(self, voter: str, term: int, sent_at: float, reply_term: int, match: int | None, hint: int) -> None:
        """A follower answered a message sent at `sent_at`; `match` is None when it refused."""
        if reply_term > self.current_term:
            self._become_follower(reply_term, leader="")
            return
        if self._role != "leader" or self.current_term != term:
            return
        if voter not in self._leader_tasks:
            return  # removed from the cluster meanwhile
        self._acked_send_time[voter] = max(self._acked_send_time.get(voter, float("-inf")), sent_at)
        if match is None:
            self._next_index[voter] = max(1, min(self._next_index[voter] - 1, hint + 1))
            return
        self._match_index[voter] = max(self._match_index.get(voter, 0), match)
        self._next_index[voter] = match + 1
        self._advance_commit()

    def _advance_commit(self) -> None:
        if self._role != "leader":
            return
        self._match_index[self.replica_id] = self._storage.last_index
        commit = rules.next_commit_index(
            self._commit_index, self._match_index, self.voters, self.current_term, self._storage.term_at
        )
        if commit > self._commit_index:
            self._commit_index = commit
            self._apply_committed()

    def _apply_committed(self) -> None:
        applied = False
        while self._state.last_index < self._commit_index:
            index = self._state.last_index + 1
            entry = self._storage.entries_from(index, 1)[0]
            self._state = self._machine.apply(self._state, entry.record)
            applied = True
            pending = self._pending.pop(index, None)
            if pending is not None and not pending[1].done():
                if pending[0] == entry.term:
                    pending[1].set_result(self._state)
                else:
                    pending[1].set_exception(NotLeaderError(self._leader_id))
        if applied:
            self._adopt_configuration()
            if self._state.last_index - self._storage.snapshot.last_index >= self._snapshot_every:
                last = self._state.last_index
                self._storage.save_snapshot(
                    Snapshot(last_index=last, last_term=self._storage.term_at(last), state=self._state)
                )
            self._notify()
